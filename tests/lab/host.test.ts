import { expect } from 'chai';
import { execa } from 'execa';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { loadProfile, profileFromEnv, type HostProfile, type ProfileDevice } from '../../harness/host/profile.js';
import { hostPaths, readPciDevice } from '../../harness/host/sysfs.js';
import { BindRefused, readJournal, replayVfioJournal, VfioBinder } from '../../harness/host/vfio-bind.js';
import { LabHost } from '../../harness/lab/lab-host.js';
import { BINDING_TEST_SHARE_TAG } from '../../harness/lab/virtual-lab.js';
import { skipBecause } from '../../harness/report/skip.js';
import { repoRoot } from '../../harness/util/paths.js';

/**
 * The lab suites run where the host has a real IOMMU exposed through iommufd:
 * a lab machine, or the virtual lab's L1. Elsewhere they skip, saying why.
 */
describe('lab host', function () {
  before(function () {
    const why = LabHost.unavailableReason();
    if (why) skipBecause(this, why);
  });

  it('has an IOMMU instance and vfio device cdev support', () => {
    expect(readdirSync('/sys/class/iommu')).to.not.have.length(0);
    expect(existsSync('/sys/class/vfio-dev') || existsSync('/dev/vfio'), 'vfio present').to.equal(true);
  });
});

/**
 * The binder on a real sysfs (the virtual lab's L1, where the devices are
 * emulated but the kernel, drivers and sysfs are real): the profile's
 * binding-test devices are taken, refused and given back for real.
 */
describe('lab host: binding devices for real', function () {
  this.timeout(120_000);
  let profile: HostProfile;
  const journal = '/run/harness-binding-test-journal.jsonl';
  const paths = hostPaths();

  before(function () {
    const why = LabHost.unavailableReason();
    if (why) skipBecause(this, why);
    profile = loadProfile(profileFromEnv()!);
  });

  function named(ctx: Mocha.Context, name: string): ProfileDevice & { driver: string } {
    const d = profile.devices.find((x) => x.role === 'binding-test' && x.name === name);
    if (!d) return skipBecause(ctx, `host profile ${profile.name} lists no binding-test device named ${name}`);
    const dev = readPciDevice(paths, d.bdf);
    expect(dev, `${d.bdf} (${name}) exists`).to.not.equal(undefined);
    expect(dev!.driver, `${d.bdf} (${name}) has a driver of its own before the test`).to.be.a('string').and.not.equal('vfio-pci');
    return { ...d, driver: dev!.driver! };
  }

  const driverOf = (bdf: string) => readPciDevice(paths, bdf)?.driver;
  const ip = async (...args: string[]) => execa('ip', args, { timeout: 10_000 });
  const netIf = (bdf: string): string => {
    const dev = readPciDevice(paths, bdf)!;
    const virtio = readdirSync(dev.path).filter((n) => n.startsWith('virtio'));
    const names = virtio.flatMap((v) => (existsSync(join(dev.path, v, 'net')) ? readdirSync(join(dev.path, v, 'net')) : []));
    expect(names, `network interface of ${bdf}`).to.have.length(1);
    return names[0]!;
  };

  async function refusal(bdf: string): Promise<string> {
    const binder = new VfioBinder(profile, { journal });
    const err = await binder.bind([bdf]).then(
      () => undefined,
      (e: unknown) => e,
    );
    binder.restoreAll();
    expect(err, `binding ${bdf} must be refused`).to.be.instanceOf(BindRefused);
    return (err as BindRefused).message;
  }

  it('refuses a device whose network link is up, naming the interface, and leaves it on its driver', async function () {
    const d = named(this, 'net-up');
    const ifname = netIf(d.bdf);
    await ip('link', 'set', 'dev', ifname, 'up');
    try {
      const msg = await refusal(d.bdf);
      expect(msg).to.include(d.bdf).and.include(`network interface ${ifname} is up`);
      expect(driverOf(d.bdf), 'still on its driver').to.equal(d.driver);
    } finally {
      await ip('link', 'set', 'dev', ifname, 'down');
    }
  });

  it('refuses a device that backs a mounted file system, naming the mount point, and leaves it on its driver', async function () {
    const d = named(this, 'share');
    const mnt = `/tmp/harness-binding-test-${process.pid}`;
    mkdirSync(mnt, { recursive: true });
    await execa('mount', ['-t', '9p', '-o', 'trans=virtio,ro', BINDING_TEST_SHARE_TAG, mnt], { timeout: 10_000 });
    try {
      const msg = await refusal(d.bdf);
      expect(msg).to.include(d.bdf).and.include(`is mounted on ${mnt}`);
      expect(driverOf(d.bdf), 'still on its driver').to.equal(d.driver);
    } finally {
      await execa('umount', [mnt], { timeout: 10_000, reject: false });
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('a SIGKILLed run leaves the device on vfio-pci and a journal; the next run replays it and the device is back on its driver', async function () {
    const d = named(this, 'net-down');
    rmSync(journal, { force: true });
    const child = execa(process.execPath, [join(repoRoot, 'dist', 'tests', 'fixtures', 'host', 'bind-real-child.js'), profileFromEnv()!, journal, d.bdf], {
      reject: false,
      timeout: 60_000,
    });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout!.on('data', (b: Buffer) => {
          out += String(b);
          if (out.includes('bound ')) resolve();
        });
        child.then((r) => reject(new Error(`the child ended before binding: ${r.stderr || r.stdout}`)), reject);
      });
      expect(driverOf(d.bdf), 'bound by the child').to.equal('vfio-pci');
      child.kill('SIGKILL');
      const r = await child;
      expect(r.signal, 'the child was SIGKILLed').to.equal('SIGKILL');
      expect(driverOf(d.bdf), 'a hard kill gives nothing back by itself').to.equal('vfio-pci');
      expect(readJournal(journal).map((e) => `${e.op} ${e.bdf}`), 'the journal holds the binding').to.include(`bind ${d.bdf}`);
      // What `harness run` does first: give back what a killed run left.
      const back = replayVfioJournal(profile, { journal });
      expect(back.map((x) => ({ bdf: x.bdf, ok: x.ok })), JSON.stringify(back)).to.deep.equal([{ bdf: d.bdf, ok: true }]);
      expect(driverOf(d.bdf), 'back on its own driver').to.equal(d.driver);
      expect(replayVfioJournal(profile, { journal }), 'a second replay has nothing left to do').to.deep.equal([]);
    } finally {
      child.kill('SIGKILL');
      if (driverOf(d.bdf) === 'vfio-pci') replayVfioJournal(profile, { journal });
    }
  });
});
