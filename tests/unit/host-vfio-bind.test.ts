import { expect } from 'chai';
import { execa } from 'execa';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { validateProfile, type HostProfile } from '../../harness/host/profile.js';
import { REAL_HOST } from '../../harness/host/sysfs.js';
import { BindRefused, checkBindable, readJournal, VfioBinder } from '../../harness/host/vfio-bind.js';
import { skipBecause } from '../../harness/report/skip.js';
import { withDeadline } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';
import { FakeHost } from '../fixtures/host/fake-sysfs.js';

const profileOf = (devices: string[], allowGroupPeers: string[] = []): HostProfile =>
  validateProfile({ name: 'bench', platform: 'vtd', devices: devices.map((bdf) => ({ bdf, role: 'no-pasid' })), allowGroupPeers }, 'bench.yaml');

const NIC = '0000:01:00.0';
const NIC2 = '0000:02:00.0';

describe('host vfio binding', () => {
  let root: string;
  let fake: FakeHost;
  let journal: string;
  const binderFor = (profile: HostProfile, ms = 2000): VfioBinder => new VfioBinder(profile, { paths: fake.paths, writer: fake.writer, journal, bindDeadlineMs: ms });

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'host-bind-'));
    journal = join(root, 'cache', 'vfio-journal.jsonl');
    fake = new FakeHost(root);
    fake.enableIommufd();
    fake.addDevice({ bdf: '0000:00:01.0', classCode: 0x060400, driver: 'pcieport', group: 1 });
    fake.addDevice({ bdf: NIC, parent: '0000:00:01.0', driver: 'e1000e', group: 1 });
    fake.addDevice({ bdf: NIC2, driver: 'igb', group: 2 });
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  describe('refusals, before anything is written', () => {
    const refusals = (profile: HostProfile, bdfs: string[]): string[] => checkBindable(profile, bdfs, fake.paths).map((r) => `${r.bdf}: ${r.reason}`);

    it('refuses devices the profile does not list', () => {
      expect(refusals(profileOf([NIC]), [NIC2])).to.deep.equal([`${NIC2}: not in profile bench's devices (bench.yaml); only listed devices are ever bound`]);
    });

    it('refuses a device that does not exist and suggests the near miss', () => {
      expect(refusals(profileOf(['0000:01:00.1']), ['0000:01:00.1'])).to.deep.equal([
        `0000:01:00.1: no such PCI device (${root}/sys/bus/pci/devices/0000:01:00.1 does not exist); did you mean 0000:01:00.0?`,
      ]);
      expect(refusals(profileOf([NIC]), ['0000:1:00.0'])).to.deep.equal(['0000:1:00.0: "0000:1:00.0" is not a PCI address (DDDD:BB:DD.F)']);
    });

    it('refuses a group peer the profile does not list, unless allowed; bridges in the group are fine', () => {
      fake.addDevice({ bdf: '0000:01:00.1', parent: '0000:00:01.0', driver: 'e1000e', group: 1 });
      expect(refusals(profileOf([NIC]), [NIC])).to.deep.equal([
        `${NIC}: IOMMU group 1 also holds 0000:01:00.1, which the profile does not list (add it to devices or allowGroupPeers)`,
      ]);
      expect(refusals(profileOf([NIC], ['0000:01:00.1']), [NIC])).to.deep.equal([]);
      expect(refusals(profileOf([NIC, '0000:01:00.1']), [NIC])).to.deep.equal([]);
    });

    it('refuses a device without an IOMMU group', () => {
      fake.addDevice({ bdf: '0000:05:00.0', driver: 'e1000e' });
      expect(refusals(profileOf(['0000:05:00.0']), ['0000:05:00.0'])[0]).to.match(/has no IOMMU group/);
    });

    it('refuses a device whose disk backs a mounted filesystem, directly, by partition, through dm, or as swap', () => {
      fake.addDevice({ bdf: '0000:03:00.0', classCode: 0x010802, driver: 'nvme', group: 3 });
      fake.addDisk('0000:03:00.0', 'nvme0n1', '259:0', [
        ['nvme0n1p1', '259:1'],
        ['nvme0n1p2', '259:2'],
        ['nvme0n1p3', '259:3'],
      ]);
      fake.addDm('dm-0', 'vg-home', '253:0', 'nvme0n1p2');
      const p = profileOf(['0000:03:00.0']);
      expect(refusals(p, ['0000:03:00.0'])).to.deep.equal([]);
      fake.mount('259:1', '/dev/nvme0n1p1', '/boot/efi', 'vfat');
      fake.mount('253:0', '/dev/mapper/vg-home', '/home');
      writeFileSync(join(root, 'proc/swaps'), 'Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p3 partition\t8388604\t0\t-2\n');
      expect(refusals(p, ['0000:03:00.0'])).to.deep.equal([
        '0000:03:00.0: in use by the host: block device nvme0n1 → nvme0n1p1 (259:1) is mounted on /boot/efi',
        '0000:03:00.0: in use by the host: block device nvme0n1 → nvme0n1p2 → dm-0 (253:0) is mounted on /home',
        '0000:03:00.0: in use by the host: block device nvme0n1 → nvme0n1p3 is in use as swap (/dev/nvme0n1p3)',
      ]);
    });

    it('refuses a virtio-9p function whose share is mounted (the virtual lab root)', () => {
      fake.addDevice({ bdf: '0000:00:04.0', classCode: 0x000200, driver: 'virtio-pci', group: 7 });
      fake.add9p('0000:00:04.0', 'rootfs');
      const p = profileOf(['0000:00:04.0']);
      expect(refusals(p, ['0000:00:04.0'])).to.deep.equal([]);
      fake.mount('0:40', 'rootfs', '/', '9p');
      expect(refusals(p, ['0000:00:04.0'])).to.deep.equal(['0000:00:04.0: in use by the host: 9p share rootfs is mounted on /']);
    });

    it('refuses a device with an up network interface, not a down one', () => {
      fake.addNet(NIC2, 'enp2s0', false);
      expect(refusals(profileOf([NIC2]), [NIC2])).to.deep.equal([]);
      fake.addNet(NIC2, 'enp2s0', true);
      expect(refusals(profileOf([NIC2]), [NIC2])).to.deep.equal([`${NIC2}: in use by the host: network interface enp2s0 is up (flags 0x1003, operstate up)`]);
    });

    it('refuses everything when vfio-pci is not loaded', () => {
      rmSync(join(root, 'sys/bus/pci/drivers/vfio-pci'), { recursive: true });
      expect(refusals(profileOf([NIC2]), [NIC2])[0]).to.match(/^\*: the vfio-pci driver is not loaded/);
    });

    it('binds nothing when one of several devices is refused', async () => {
      fake.addNet(NIC2, 'enp2s0', true);
      const b = binderFor(profileOf([NIC, NIC2]));
      const err = await b.bind().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(BindRefused);
      expect((err as BindRefused).message).to.match(/^refusing to bind \(nothing was bound\):\n {2}0000:02:00.0: in use by the host: network interface enp2s0 is up/);
      expect(fake.writes).to.deep.equal([]);
      expect(existsSync(journal)).to.equal(false);
    });

    it('refuses, on this machine, its root disk and its up network interface (checkBindable only reads)', function () {
      const uses = (bdf: string): string[] => checkBindable(profileOf([bdf]), [bdf], REAL_HOST).map((r) => r.reason);
      const byBdf = new Map<string, string[]>();
      for (const bdf of ['0000:00:02.0', '0000:00:03.0']) if (existsSync(`/sys/bus/pci/devices/${bdf}`)) byBdf.set(bdf, uses(bdf));
      const all = [...byBdf.values()].flat().join('\n');
      if (!/mounted on \/\n|mounted on \/$|is up/m.test(all)) skipBecause(this, 'neither 0000:00:02.0 nor 0000:00:03.0 backs / or an up network link on this machine');
      expect(all).to.match(/in use by the host: (block device .* is mounted on \/|network interface .* is up)/);
    });
  });

  it('binds with driver_override + unbind + drivers_probe and gives back in reverse', async () => {
    const b = binderFor(profileOf([NIC, NIC2]));
    const bound = await b.bind();
    expect(bound).to.deep.equal([
      { bdf: NIC, cdev: join(root, 'dev/vfio/devices/vfio0'), vfioDev: 'vfio0', group: 1, originalDriver: 'e1000e', originalOverride: null, wasVfio: false },
      { bdf: NIC2, cdev: join(root, 'dev/vfio/devices/vfio1'), vfioDev: 'vfio1', group: 2, originalDriver: 'igb', originalOverride: null, wasVfio: false },
    ]);
    expect(fake.writes.slice(0, 3)).to.deep.equal([
      [`sys/bus/pci/devices/${NIC}/driver_override`, 'vfio-pci'],
      [`sys/bus/pci/drivers/e1000e/unbind`, NIC],
      ['sys/bus/pci/drivers_probe', NIC],
    ]);
    expect(readJournal(journal).map((e) => [e.op, e.bdf])).to.deep.equal([
      ['bind', NIC],
      ['bind', NIC2],
    ]);
    fake.writes.length = 0;
    const restored = b.restoreAll();
    expect(restored.map((r) => [r.bdf, r.ok])).to.deep.equal([
      [NIC2, true],
      [NIC, true],
    ]);
    expect(restored[1]!.detail).to.equal('driver_override cleared, unbound from vfio-pci; back on e1000e');
    expect(fake.writes.slice(0, 3)).to.deep.equal([
      [`sys/bus/pci/devices/${NIC2}/driver_override`, '\n'],
      ['sys/bus/pci/drivers/vfio-pci/unbind', NIC2],
      ['sys/bus/pci/drivers_probe', NIC2],
    ]);
    expect([fake.driverOf(NIC), fake.driverOf(NIC2), fake.override(NIC)]).to.deep.equal(['e1000e', 'igb', '(null)']);
    expect(existsSync(join(root, 'dev/vfio/devices/vfio0'))).to.equal(false);
    expect(existsSync(journal), 'journal removed once everything is back').to.equal(false);
  });

  it('writes nothing when the journal cannot be written, and says which variable moves it', async () => {
    writeFileSync(join(root, 'not-a-dir'), '');
    const b = new VfioBinder(profileOf([NIC2]), { paths: fake.paths, writer: fake.writer, journal: join(root, 'not-a-dir', 'journal.jsonl') });
    const err = await b.bind().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).to.match(/^cannot write the vfio journal .*not-a-dir\/journal\.jsonl \(set HARNESS_VFIO_JOURNAL to a writable path\): /);
    expect(fake.writes).to.deep.equal([]);
    expect(fake.driverOf(NIC2)).to.equal('igb');
  });

  it('waits for vfio-dev to appear, within the deadline', async () => {
    fake.vfioDelayMs = 150;
    const b = binderFor(profileOf([NIC2]));
    const [d] = await b.bind();
    expect(d!.vfioDev).to.equal('vfio0');
    b.restoreAll();
  });

  it('fails with the reason when vfio-pci does not take the device, and gives it back', async () => {
    fake.failingDrivers.add('vfio-pci');
    const b = binderFor(profileOf([NIC2]), 200);
    const err = await b.bind().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).to.equal(`${NIC2}: vfio-pci did not take the device within 200 ms (driver is none)`);
    expect([fake.driverOf(NIC2), fake.override(NIC2)]).to.deep.equal(['igb', '(null)']);
    expect(b.bound).to.deep.equal([]);
  });

  it('leaves a device that was already on vfio-pci where it is', async () => {
    fake.addDevice({ bdf: '0000:04:00.0', driver: 'vfio-pci', group: 4 });
    const b = binderFor(profileOf(['0000:04:00.0']));
    const [d] = await b.bind();
    expect(d).to.include({ wasVfio: true, originalDriver: 'vfio-pci', vfioDev: 'vfio0' });
    expect(fake.writes).to.deep.equal([]);
    expect(b.restoreAll()[0]!.detail).to.equal('was on vfio-pci before; left there');
    expect(fake.driverOf('0000:04:00.0')).to.equal('vfio-pci');
  });

  it('replays a journal of a dead run before binding, and leaves a live run alone', async () => {
    // What a killed run leaves: NIC2 on vfio-pci with the override set, a bind entry, no restored entry.
    fake.writer.write(join(root, `sys/bus/pci/devices/${NIC2}/driver_override`), 'vfio-pci');
    fake.writer.write(join(root, 'sys/bus/pci/drivers/igb/unbind'), NIC2);
    fake.writer.write(join(root, 'sys/bus/pci/drivers_probe'), NIC2);
    const dead = 2 ** 22 + 1; // above pid_max's default: no such process
    const live = process.ppid;
    const lines = [
      { op: 'bind', bdf: NIC2, originalDriver: 'igb', originalOverride: null, pid: dead, time: 't' },
      { op: 'bind', bdf: NIC, originalDriver: 'e1000e', originalOverride: null, pid: live, time: 't' },
    ];
    mkdirSync(dirname(journal), { recursive: true });
    writeFileSync(journal, `${lines.map((l) => JSON.stringify(l)).join('\n')}\n{"op":"bind","bdf":"0000:0`);
    const b = binderFor(profileOf([NIC, NIC2]));
    const results = b.replayJournal();
    expect(results).to.deep.equal([{ bdf: NIC2, ok: true, detail: `from the journal of process ${dead}: driver_override cleared, unbound from vfio-pci; back on igb` }]);
    expect([fake.driverOf(NIC2), fake.override(NIC2)]).to.deep.equal(['igb', '(null)']);
    expect(readJournal(journal).map((e) => [e.bdf, e.pid])).to.deep.equal([[NIC, live]]);
  });

  describe('in a child process', () => {
    const child = join(repoRoot, 'dist', 'tests', 'fixtures', 'host', 'bind-child.js');
    const started: { kill(sig: NodeJS.Signals): boolean }[] = [];
    // A failed assertion must not leave a child waiting forever.
    afterEach(() => {
      for (const c of started.splice(0)) c.kill('SIGKILL');
    });
    const start = async (mode: string) => {
      const p = execa('node', [child, root, journal, NIC2, mode], { reject: false });
      started.push(p);
      let out = '';
      await withDeadline(
        new Promise<void>((resolve, reject) => {
          p.stdout!.on('data', (d: Buffer) => {
            out += d.toString();
            if (out.includes('bound')) resolve();
          });
          p.once('exit', () => reject(new Error(`child exited before binding: ${out}`)));
        }),
        20_000,
        'child binding',
      );
      expect(fake.driverOf(NIC2)).to.equal('vfio-pci');
      // Wrapped: an async function returning the subprocess (a thenable) would wait for its exit.
      return { p };
    };

    it('gives the device back on SIGTERM, and still dies of the signal', async () => {
      const { p } = await start('handlers');
      p.kill('SIGTERM');
      const r = await p;
      expect(r.signal).to.equal('SIGTERM');
      expect([fake.driverOf(NIC2), fake.override(NIC2)]).to.deep.equal(['igb', '(null)']);
      expect(existsSync(journal)).to.equal(false);
    });

    it('gives the device back on SIGINT', async () => {
      const { p } = await start('handlers');
      p.kill('SIGINT');
      expect((await p).signal).to.equal('SIGINT');
      expect(fake.driverOf(NIC2)).to.equal('igb');
    });

    it('after a hard kill, the next run replays the journal first', async () => {
      const { p } = await start('handlers');
      p.kill('SIGKILL');
      await p;
      expect(fake.driverOf(NIC2), 'SIGKILL runs no handler').to.equal('vfio-pci');
      expect(readFileSync(journal, 'utf8')).to.match(/"op":"bind","bdf":"0000:02:00.0","originalDriver":"igb"/);
      const next = binderFor(profileOf([NIC]));
      const bound = await next.bind([NIC]);
      expect(fake.driverOf(NIC2), 'replayed before binding').to.equal('igb');
      expect(bound.map((d) => d.vfioDev)).to.deep.equal(['vfio0']);
      next.restoreAll();
      expect(existsSync(journal)).to.equal(false);
    });
  });
});
