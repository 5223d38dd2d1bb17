import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import type { MachineDescription } from '../../harness/qemu/argv.js';
import type { Machine } from '../../harness/qemu/machine.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../../harness/qemu/topology.js';
import type { PciDevice } from '../../harness/qmp/client.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemuFeatures } from '../../harness/testing/prereqs.js';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { VfioUserDevices } from '../../harness/vfio-user/attach.js';
import { CapId, Exp, ExtCapId } from '../../harness/vfio-user/device-model.js';
import { pasidEndpoint, plainEndpoint } from '../../harness/vfio-user/devices/index.js';
import { Command } from '../../harness/vfio-user/protocol.js';

/** q35 with SeaBIOS: MMCONFIG is where the firmware puts PCIEXBAR. */
const MMCONFIG_BASE = 0xb000_0000;

/** Reads guest-physical memory through HMP `xp` (here: MMCONFIG, i.e. config space as the guest sees it). */
async function readGuestDwords(m: Machine, addr: number, count: number): Promise<number[]> {
  const out = await m.qmp.hmp(`xp /${count}xw 0x${addr.toString(16)}`);
  return [...out.matchAll(/0x([0-9a-f]{8})/g)].map((x) => parseInt(x[1]!, 16));
}

async function guestConfig(m: Machine, d: PciDevice): Promise<Buffer> {
  const base = MMCONFIG_BASE + d.bus * (1 << 20) + d.slot * (1 << 15) + d.function * (1 << 12);
  const words = [...(await readGuestDwords(m, base, 0x40)), ...(await readGuestDwords(m, base + 0x100, 0x10))];
  const b = Buffer.alloc(0x140);
  words.forEach((w, i) => b.writeUInt32LE(w, i < 0x40 ? 4 * i : 0x100 + 4 * (i - 0x40)));
  return b;
}

function findCap(cfg: Buffer, id: number): number {
  for (let at = cfg[0x34]!, n = 0; at !== 0 && n < 48; at = cfg[at + 1]!, n++) if (cfg[at] === id) return at;
  return 0;
}

function extCapIds(cfg: Buffer): number[] {
  const ids: number[] = [];
  for (let at = 0x100; at >= 0x100 && at < 0x140 && ids.length < 8; ) {
    const h = cfg.readUInt32LE(at);
    if (h === 0) break;
    ids.push(h & 0xffff);
    at = h >>> 20;
  }
  return ids;
}

/** Lets SeaBIOS number the buses and assign BARs, until query-pci shows every id with addresses. */
async function untilEnumerated(m: Machine, ids: string[], ms: number): Promise<Map<string, PciDevice>> {
  await m.qmp.execute('cont');
  return withDeadline(
    (async () => {
      for (;;) {
        const devs = await m.qmp.pciDevices();
        const found = new Map(devs.filter((d) => ids.includes(d.qdev_id)).map((d) => [d.qdev_id, d]));
        if (found.size === ids.length && [...found.values()].every((d) => d.regions.every((r) => r.address !== -1 && r.address !== 0))) return found;
        await sleep(100);
      }
    })(),
    ms,
    `firmware enumerating ${ids.join(', ')} behind their root ports`,
  );
}

describe('vfio-user device server with QEMU (vfio-user-pci, TCG)', function () {
  this.timeout(60_000);
  before(async function () {
    await requireQemuFeatures(this, 'x86_64', { device: 'vfio-user-pci' });
  });
  const machines = useMachines();
  let devs: VfioUserDevices;
  beforeEach(() => {
    devs = new VfioUserDevices();
  });
  afterEach(async function () {
    // The machines are gone by now: the fixture's afterEach was registered first.
    await devs.close();
  });

  it('QEMU realizes the devices: handshake, config reads, DMA_MAPs; the guest sees our ids, BARs and capabilities', async () => {
    const pasid = (await devs.add(pasidEndpoint, { id: 'vu0', bus: 'rp0' })).server;
    const plain = (await devs.add(plainEndpoint, { id: 'vu1', bus: 'rp1' })).server;
    const noPrefix = (await devs.add('pasid-no-tlp-prefix', { id: 'vu2', bus: 'rp2' })).server;
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'q35' }, memoryMB: 256, paused: true, devices: [...rootPorts(3), ...devs.specs()] });

    // Realize happened before QMP answered: the server saw the whole setup.
    for (const s of [pasid, plain, noPrefix]) {
      expect(s.clientVersion?.capabilities, s.device.description.name).to.have.nested.property('capabilities.max_msg_fds');
      expect(s.stats.byCommand[Command.DEVICE_GET_INFO]).to.equal(1);
      expect(s.stats.byCommand[Command.DEVICE_GET_REGION_INFO], 'BARs 0-5 and config').to.be.at.least(7);
      expect(s.stats.configReads).to.be.greaterThan(0);
      expect(s.stats.dmaMaps, 'guest RAM mapped for DMA').to.be.greaterThan(0);
      expect(s.stats.errorReplies).to.equal(0);
    }
    expect(pasid.stats.dmaMapBytes, 'at least the 256 MB of RAM').to.be.at.least(256 << 20);
    expect(m.stderrTail(), 'QEMU printed no warning (e.g. "spurious capabilities")').to.equal('');

    const found = await untilEnumerated(m, ['vu0', 'vu1', 'vu2'], 30_000);
    const vu0 = found.get('vu0')!;
    expect(vu0.id).to.deep.include({ vendor: 0x7e57, device: 0x0002, 'subsystem-vendor': 0x7e57, subsystem: 0x0002 });
    expect(vu0.class_info.class, 'base class 0xff, subclass 0').to.equal(0xff00);
    expect(vu0.regions.map((r) => ({ bar: r.bar, size: r.size, type: r.type }))).to.deep.equal([
      { bar: 0, size: 0x4000, type: 'memory' },
      { bar: 2, size: 0x100000, type: 'memory' },
    ]);
    const bar2 = vu0.regions[1] as PciDevice['regions'][number] & { mem_type_64?: boolean; prefetch?: boolean };
    expect(bar2).to.include({ mem_type_64: true, prefetch: true });
    expect(found.get('vu1')!.id.device).to.equal(0x0001);

    // Config space as the guest reads it through MMCONFIG (QEMU forwards most of it to us).
    const cfg0 = await guestConfig(m, vu0);
    expect(cfg0.readUInt32LE(0)).to.equal(0x00027e57);
    expect(extCapIds(cfg0), 'PASID, ATS, PRI pass through to the guest').to.deep.equal([ExtCapId.PASID, ExtCapId.ATS, ExtCapId.PRI]);
    expect(cfg0.readUInt16LE(0x104), 'PASID: 20 bits, exec, priv').to.equal(0x1406);
    const exp0 = findCap(cfg0, CapId.EXP);
    expect(exp0).to.not.equal(0);
    expect(cfg0.readUInt32LE(exp0 + Exp.DEVCAP2) & 0x300000, 'DevCap2 bits 20 and 21').to.equal(0x300000);

    const cfg1 = await guestConfig(m, found.get('vu1')!);
    expect(extCapIds(cfg1), 'plain-endpoint: no extended capabilities').to.deep.equal([]);
    const cfg2 = await guestConfig(m, found.get('vu2')!);
    expect(extCapIds(cfg2)).to.include(ExtCapId.PASID);
    expect(cfg2.readUInt32LE(findCap(cfg2, CapId.EXP) + Exp.DEVCAP2) & 0x300000, 'pasid-no-tlp-prefix: bits 20/21 clear').to.equal(0);

    // The firmware programmed the BARs and enabled memory decoding through us.
    expect(pasid.stats.configWrites).to.be.greaterThan(0);
    expect((pasid.device.config.readUInt32LE(0x10) & ~0xf) >>> 0, 'BAR0 address as the firmware wrote it').to.equal(vu0.regions[0]!.address);
  });

  it('device_add connects, device_del closes the session, device_add on the same socket handshakes again', async () => {
    const { server: s, spec } = await devs.add(pasidEndpoint, { id: 'vu0', bus: 'rp0' });
    // An empty root port stays powered off with no guest, so a device hot-added
    // there unplugs without the guest's help (a cold-plugged one would wait for it).
    const desc: MachineDescription = { arch: 'x86_64', machine: { type: 'q35' }, paused: true, globals: [NATIVE_PCIE_HOTPLUG], devices: rootPorts(1) };
    const m = await machines.launch(desc);
    await m.qmp.deviceAdd(spec);
    await s.waitForHandshake(5000);
    expect(s.sessionActive).to.equal(true);
    expect(await m.qmp.qomGet('/machine/peripheral/vu0', 'type')).to.equal('vfio-user-pci');

    await m.qmp.deviceDel('vu0', 10_000);
    const end = await s.waitForSessionEnd(10_000);
    expect(end.reason, 'QEMU closed the socket').to.equal('peer-closed');
    expect(s.sessionActive).to.equal(false);

    await m.qmp.deviceAdd(spec);
    await s.waitForHandshake(5000);
    expect(s.stats.versionHandshakes).to.equal(2);
    expect(s.stats.refusedConnections).to.equal(0);

    await m.shutdown();
    expect((await s.waitForSessionEnd(5000)).reason).to.equal('peer-closed');
  });

  it('with memfd-backed RAM (an fd with every DMA_MAP) the server holds no new fds', async () => {
    const { server: s } = await devs.add(pasidEndpoint, { id: 'vu0', bus: 'rp0' });
    const fdsBefore = readdirSync('/proc/self/fd').length;
    const m = await machines.launch({
      arch: 'x86_64',
      machine: { type: 'q35', props: { 'memory-backend': 'ram0' } },
      memoryMB: 256,
      paused: true,
      objects: [{ 'qom-type': 'memory-backend-memfd', id: 'ram0', size: 256 << 20, share: true }],
      devices: [...rootPorts(1), ...devs.specs()],
    });
    await s.waitForHandshake(5000);
    expect(s.stats.dmaMaps).to.be.greaterThan(0);
    await m.shutdown();
    await s.waitForSessionEnd(5000);
    const fdsAfter = readdirSync('/proc/self/fd').length;
    expect(fdsAfter, `fds before QEMU ${fdsBefore}, after ${fdsAfter}`).to.be.at.most(fdsBefore);
  });

  it('the server must outlive QEMU: closed under a running machine, QEMU aborts at its next DMA map', async () => {
    const { server: s } = await devs.add(pasidEndpoint, { id: 'vu0', bus: 'rp0' });
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'q35' }, memoryMB: 256, paused: true, devices: [...rootPorts(1), ...devs.specs()] });
    await s.waitForHandshake(5000);
    machines.expectExit(m, 'QEMU aborts once its vfio-user server is gone; the test checks it');
    await devs.close();
    expect((await m.qmp.queryStatus()).status, 'nothing happens while no DMA mapping changes').to.equal('prelaunch');
    // The firmware reprograms the PAM registers at once, which remaps RAM for DMA.
    await m.qmp.execute('cont').catch(() => {});
    const exit = await m.waitExit(20_000);
    expect(exit.signal).to.equal('SIGABRT');
    expect(m.stderrTail(200)).to.include('failed to read header: EOF').and.include('vfio: DMA mapping failed, unable to continue');
  });
});
