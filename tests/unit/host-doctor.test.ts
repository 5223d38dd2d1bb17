import { expect } from 'chai';
import { execa } from 'execa';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { doctorCommand, hostPrerequisites, probeHost } from '../../harness/cli/doctor.js';
import { DeviceLeases } from '../../harness/host/lease.js';
import { validateProfile, type HostProfile } from '../../harness/host/profile.js';
import { processStart } from '../../harness/util/owner.js';
import { repoRoot } from '../../harness/util/paths.js';
import { ATS, FakeHost, L1_CAP, L1_ECAP, PASID_20, pcieConfig, PRI } from '../fixtures/host/fake-sysfs.js';

const NEST = 1n << 26n;
const SLADS = 1n << 45n;
const withBits = (ecap: string, bits: bigint): string => (BigInt(`0x${ecap}`) | bits).toString(16);
const withoutBits = (ecap: string, bits: bigint): string => (BigInt(`0x${ecap}`) & ~bits).toString(16);

const labProfile = (devices: { bdf: string; role: string; name?: string }[]): HostProfile =>
  validateProfile({ name: 'lab', platform: 'vtd', accel: 'auto', devices }, 'lab.yaml');

function capture(): { io: { stdout: PassThrough; stderr: PassThrough }; out: () => string; err: () => string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let o = '';
  let e = '';
  stdout.on('data', (d: Buffer) => (o += d.toString()));
  stderr.on('data', (d: Buffer) => (e += d.toString()));
  return { io: { stdout, stderr }, out: () => o, err: () => e };
}

describe('host doctor', () => {
  let root: string;
  let fake: FakeHost;
  const noTool = '/nonexistent/iommufd-probe';

  /** The virtual lab's L1 as the facts sheet describes it: emulated VT-d, three devices on root ports, none with PASID. */
  function l1(ecap = L1_ECAP): void {
    fake.enableIommufd();
    fake.addVtd('dmar0', L1_CAP, ecap);
    [1, 2, 3].forEach((n) => {
      fake.addDevice({ bdf: `0000:00:0${n}.0`, classCode: 0x060400, driver: 'pcieport', group: n, iommu: 'dmar0', config: pcieConfig([], { portType: 4 }) });
    });
    fake.addDevice({ bdf: '0000:01:00.0', parent: '0000:00:01.0', device: 0x10d3, driver: 'e1000e', group: 1, iommu: 'dmar0', config: pcieConfig([]) });
    fake.addDevice({ bdf: '0000:02:00.0', parent: '0000:00:02.0', device: 0x10c9, driver: 'igb', group: 2, iommu: 'dmar0', config: pcieConfig([ATS]) });
    fake.addDevice({ bdf: '0000:03:00.0', parent: '0000:00:03.0', vendor: 0x1234, device: 0x11e8, classCode: 0x00ff00, group: 3, iommu: 'dmar0', config: pcieConfig([]) });
  }
  const l1Profile = (): HostProfile =>
    labProfile([
      { bdf: '0000:01:00.0', role: 'no-pasid', name: 'e1000e' },
      { bdf: '0000:02:00.0', role: 'no-pasid', name: 'igb' },
      { bdf: '0000:03:00.0', role: 'no-pasid', name: 'edu' },
    ]);

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'host-doctor-'));
    fake = new FakeHost(root);
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('reports an L1-like host: VT-d decoded, devices with driver, group and caps', async () => {
    l1();
    const r = await probeHost({ paths: fake.paths, profile: l1Profile(), kvmReason: 'no usable /dev/kvm', probeTool: noTool });
    expect(Object.keys(r)).to.have.members(['schema', 'generatedAt', 'host', 'paths', 'kvm', 'iommu', 'iommufd', 'vfio', 'probeTool', 'profile', 'devices', 'kernelAnswers']);
    expect(r.kvm).to.deep.equal({ arch: 'x86_64', ok: false, reason: 'no usable /dev/kvm' });
    expect(r.profile).to.deep.include({ name: 'lab', platform: 'vtd', accel: 'auto', resolvedAccel: 'tcg' });
    const [dmar] = r.iommu.instances;
    expect(dmar).to.deep.include({ name: 'dmar0', kind: 'vtd', devices: 6 });
    expect(dmar!.vtd).to.deep.include({ ecap: '0x499880f00f4e', scalableMode: true, nested: false, firstStage: false, secondStage: true, pasid: true, pasidBits: 20, secondStageAccessedDirty: false });
    expect(r.iommufd.ok).to.equal(true);
    expect(r.probeTool).to.deep.equal({ path: noTool, built: false });
    const igb = r.devices[1]!;
    expect(igb).to.deep.include({ bdf: '0000:02:00.0', exists: true, vendor: '0x8086', device: '0x10c9', driver: 'igb', iommuGroup: 2, groupPeers: ['0000:00:02.0'], iommu: 'dmar0', cdev: null, behindConventionalBridge: false });
    expect(igb.extCaps).to.deep.include({ pcie: true, extended: ['ATS'] });
    expect(igb.hwInfo).to.deep.equal({ ok: false, reason: '0000:02:00.0 is not bound to vfio-pci (driver igb); harness doctor --bind binds it for the probe and gives it back' });
    expect(JSON.parse(JSON.stringify(r))).to.deep.equal(r, 'the report is plain JSON');
  });

  it('gives each prerequisite an exact reason: the L1 VT-d has no nesting, no dirty tracking, no PASID device', async () => {
    l1();
    const pre = hostPrerequisites(await probeHost({ paths: fake.paths, profile: l1Profile(), kvmReason: 'no usable /dev/kvm', probeTool: noTool }));
    expect(pre).to.deep.equal({
      kvm: { ok: false, reason: 'no usable /dev/kvm' },
      iommu: { ok: true, reason: 'IOMMU dmar0 (vtd)' },
      iommufd: { ok: true, reason: `${root}/dev/iommu exists` },
      vfioCdev: { ok: true, reason: 'vfio-pci with device cdevs (/dev/vfio/devices)' },
      nesting: { ok: false, reason: 'host IOMMU dmar0 has no nesting (ecap.NEST=0)' },
      dirtyTracking: { ok: false, reason: 'host IOMMU dmar0 has no dirty tracking (ecap.SLADS=0)' },
      pasidDevice: { ok: false, reason: 'profile lab lists no device with role pasid' },
      noPasidDevice: { ok: true, reason: 'device 0000:01:00.0 (role no-pasid)' },
      bridgeDevice: { ok: false, reason: 'profile lab lists no device with role behind-bridge' },
      // No device is bound on the fake host, so the kprobe self-check has nothing to fire at (or no tracefs here).
      kernelAnswers: pre.kernelAnswers,
    });
    expect(pre.kernelAnswers.ok).to.equal(false);
    expect(pre.kernelAnswers.reason).to.match(/^kernel answers (unavailable|unverified): /);
  });

  it('finds nesting, dirty tracking and a PASID device where the host has them', async () => {
    l1(withBits(L1_ECAP, NEST | SLADS));
    fake.addDevice({ bdf: '0000:04:00.0', device: 0x1572, driver: 'i40e', group: 4, iommu: 'dmar0', config: pcieConfig([ATS, PRI, PASID_20]) });
    const profile = labProfile([
      { bdf: '0000:04:00.0', role: 'pasid' },
      { bdf: '0000:01:00.0', role: 'no-pasid' },
    ]);
    const r = await probeHost({ paths: fake.paths, profile, kvmReason: null, probeTool: noTool });
    expect(r.devices[0]!.extCaps).to.deep.include({ pasid: { offset: r.devices[0]!.extCaps!.pasid!.offset, maxPasidWidth: 20, execPermissionSupported: true, privilegedModeSupported: true, enabled: false } });
    const pre = hostPrerequisites(r);
    expect(pre.nesting).to.deep.equal({ ok: true, reason: 'host IOMMU dmar0 has nesting (ecap.NEST=1)' });
    expect(pre.dirtyTracking).to.deep.equal({ ok: true, reason: 'host IOMMU dmar0 has dirty tracking (ecap.SLADS=1)' });
    expect(pre.pasidDevice).to.deep.equal({ ok: true, reason: 'device 0000:04:00.0 has a PASID capability (20 bits)' });
    expect(pre.kvm.ok).to.equal(true);
  });

  it('says why a PASID device does not count: no capability, no PASID in the IOMMU, missing', async () => {
    l1(withoutBits(L1_ECAP, 1n << 40n));
    fake.addDevice({ bdf: '0000:04:00.0', driver: 'i40e', group: 4, iommu: 'dmar0', config: pcieConfig([ATS]) });
    fake.addDevice({ bdf: '0000:05:00.0', driver: 'i40e', group: 5, iommu: 'dmar0', config: pcieConfig([PASID_20]) });
    const reason = async (bdfs: string[]): Promise<string> =>
      hostPrerequisites(await probeHost({ paths: fake.paths, profile: labProfile(bdfs.map((bdf) => ({ bdf, role: 'pasid' }))), kvmReason: null, probeTool: noTool })).pasidDevice.reason;
    expect(await reason(['0000:04:00.0'])).to.equal('device 0000:04:00.0 (role pasid) has no PASID capability in its config space');
    expect(await reason(['0000:05:00.0'])).to.equal('host IOMMU dmar0 has no PASID support (ecap.PASID=0)');
    expect(await reason(['0000:0a:00.0'])).to.equal('no device with role pasid exists here (0000:0a:00.0 does not exist)');
  });

  it('tells a device behind a conventional PCI bridge from one on a root port', async () => {
    l1();
    fake.addDevice({ bdf: '0000:00:1e.0', classCode: 0x060401, driver: 'pcieport', group: 9, config: pcieConfig([], { portType: 7 }) });
    fake.addDevice({ bdf: '0000:05:01.0', parent: '0000:00:1e.0', classCode: 0x020000, driver: 'e1000', group: 9, config: Buffer.alloc(256) });
    const profile = labProfile([
      { bdf: '0000:05:01.0', role: 'behind-bridge' },
      { bdf: '0000:01:00.0', role: 'no-pasid' },
    ]);
    const r = await probeHost({ paths: fake.paths, profile, kvmReason: null, probeTool: noTool });
    expect(r.devices.map((d) => d.behindConventionalBridge)).to.deep.equal([true, false]);
    expect(hostPrerequisites(r).bridgeDevice).to.deep.equal({ ok: true, reason: 'device 0000:05:01.0 (role behind-bridge)' });
  });

  it('with --bind: binds, asks iommufd, gives back; hw info outranks sysfs', async () => {
    l1(withBits(L1_ECAP, NEST));
    // A stand-in for the helper that answers like the L1 kernel: the registers without NEST, no dirty tracking.
    const tool = join(root, 'fake-probe');
    const out = (mode: string): string =>
      mode === 'hw-info'
        ? `{"cdev":"$4","dev_id":1,"out_data_type":1,"out_data_type_name":"INTEL_VTD","data_len":24,"out_capabilities":0,"out_max_pasid_log2":0,"vtd":{"flags":0,"cap_reg":"0x${L1_CAP}","ecap_reg":"0x${L1_ECAP}"}}`
        : `{"cdev":"$4","dev_id":1,"ioas_id":2,"results":[{"flags":"0x0","ok":true,"hwpt_id":3},{"flags":"0x1","ok":false,"errno":"EOPNOTSUPP"}]}`;
    writeFileSync(tool, `#!/bin/sh\n[ -e "$4" ] || exit 9\nif [ "$1" = hw-info ]; then echo '${out('hw-info')}'; else echo '${out('hwpt')}'; fi\n`);
    chmodSync(tool, 0o755);
    const profile = labProfile([{ bdf: '0000:02:00.0', role: 'no-pasid' }]);
    const r = await probeHost({ paths: fake.paths, profile, kvmReason: null, probeTool: tool, bind: true, hwptFlags: [0, 1], binder: { writer: fake.writer, journal: join(root, 'journal.jsonl') }, leases: new DeviceLeases(join(root, 'leases')) });
    const d = r.devices[0]!;
    expect(d.problems).to.deep.equal([]);
    expect(d.cdev).to.equal(join(root, 'dev/vfio/devices/vfio0'));
    expect(d.hwInfo).to.deep.include({ ok: true, devId: 1, outDataType: 'INTEL_VTD', outMaxPasidLog2: 0, capabilities: [] });
    expect(d.hwptAlloc).to.deep.equal({ ok: true, results: [{ flags: '0x0', ok: true }, { flags: '0x1', ok: false, errno: 'EOPNOTSUPP' }] });
    expect(fake.driverOf('0000:02:00.0'), 'given back').to.equal('igb');
    const pre = hostPrerequisites(r);
    expect(pre.nesting).to.deep.equal({ ok: false, reason: 'host IOMMU dmar0 has no nesting (ecap.NEST=0, IOMMU_GET_HW_INFO for 0000:02:00.0)' });
    expect(pre.dirtyTracking).to.deep.equal({ ok: false, reason: 'IOMMU_GET_HW_INFO for 0000:02:00.0 reports no IOMMU_HW_CAP_DIRTY_TRACKING' });
  });

  it('doctor --bind takes the lab runs’ lease: a device another run holds is waited for, then left unbound, naming its PID, and the holder keeps it', async () => {
    l1();
    const profilePath = join(root, 'lab.yaml');
    writeFileSync(profilePath, 'name: fake-l1\nplatform: vtd\naccel: tcg\ndevices:\n  - {bdf: "01:00.0", role: no-pasid, name: e1000e}\n');
    // The other run: a live process of its own, holding the device's lease as a lab run would.
    const other = execa('sleep', ['30']);
    const leases = join(root, 'leases');
    mkdirSync(leases);
    const lease = join(leases, '0000:01:00.0.lease');
    writeFileSync(lease, `${JSON.stringify({ pid: other.pid, start: processStart(other.pid!), time: 'then' })}\n`);
    const saved = { dir: process.env.HARNESS_LEASE_DIR, wait: process.env.HARNESS_LEASE_WAIT_MS };
    process.env.HARNESS_LEASE_DIR = leases;
    process.env.HARNESS_LEASE_WAIT_MS = '300';
    try {
      const t = capture();
      const t0 = Date.now();
      expect(await doctorCommand(['--root', root, '--profile', profilePath, '--bind'], t.io)).to.equal(0);
      expect(Date.now() - t0, 'waited for the holder').to.be.at.least(290);
      const why = `device 0000:01:00.0 is leased by run PID ${other.pid} (since then; waited 300 ms)`;
      expect(t.out()).to.include(`problem: not bound: ${why}`);
      expect(t.err()).to.include(`harness doctor: not binding 0000:01:00.0: ${why}`);
      expect(fake.driverOf('0000:01:00.0'), 'left to its holder').to.equal('e1000e');
      expect(JSON.parse(readFileSync(lease, 'utf8')).pid, 'the holder keeps its lease').to.equal(other.pid);
    } finally {
      for (const [k, v] of [['HARNESS_LEASE_DIR', saved.dir], ['HARNESS_LEASE_WAIT_MS', saved.wait]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      other.kill('SIGKILL');
      await other.catch(() => {});
    }
  });

  it('doctor --bind holds the lease while the device is bound, so a lab run cannot take it then; released after', async () => {
    fake.enableIommufd();
    fake.addDevice({ bdf: '0000:02:00.0', driver: 'igb', group: 2 });
    const dir = join(root, 'leases');
    const seen: Array<number | undefined> = [];
    const holder = () => new DeviceLeases(dir).holder('0000:02:00.0')?.pid;
    const profile = labProfile([{ bdf: '0000:02:00.0', role: 'no-pasid' }]);
    // The binder's log line for the bind is written while the device is on vfio-pci.
    const log = (l: string) => {
      if (l.includes('→ vfio-pci')) seen.push(holder());
    };
    const r = await probeHost({ paths: fake.paths, profile, kvmReason: null, probeTool: noTool, bind: true, binder: { writer: fake.writer, journal: join(root, 'journal.jsonl'), log }, leases: new DeviceLeases(dir) });
    expect(r.devices[0]!.problems).to.deep.equal([]);
    expect(seen, 'the lease holder while bound').to.deep.equal([process.pid]);
    expect(holder(), 'released after').to.equal(undefined);
    expect(fake.driverOf('0000:02:00.0')).to.equal('igb');
  });

  it('prints JSON with --json and a table without, from a profile file and a fake root', async () => {
    l1();
    const profilePath = join(root, 'lab.yaml');
    writeFileSync(profilePath, 'name: fake-l1\nplatform: vtd\naccel: tcg\ndevices:\n  - {bdf: "01:00.0", role: no-pasid, name: e1000e}\n');
    const j = capture();
    expect(await doctorCommand(['--json', '--root', root, '--profile', profilePath], j.io)).to.equal(0);
    const report = JSON.parse(j.out()) as Record<string, unknown> & { prerequisites: Record<string, { ok: boolean; reason: string }>; devices: { bdf: string }[] };
    expect(Object.keys(report)).to.include.members(['kvm', 'iommu', 'iommufd', 'vfio', 'devices', 'profile', 'prerequisites']);
    expect(Object.keys(report.prerequisites)).to.have.members(['kvm', 'iommu', 'iommufd', 'vfioCdev', 'nesting', 'dirtyTracking', 'pasidDevice', 'noPasidDevice', 'bridgeDevice', 'kernelAnswers']);
    expect(report.prerequisites.nesting).to.deep.equal({ ok: false, reason: 'host IOMMU dmar0 has no nesting (ecap.NEST=0)' });
    expect(report.devices.map((d) => d.bdf)).to.deep.equal(['0000:01:00.0']);
    const t = capture();
    expect(await doctorCommand(['--root', root, '--profile', profilePath], t.io)).to.equal(0);
    expect(t.out()).to.match(/IOMMU {5}dmar0 \(vtd, 6 devices\): cap 0xd2008c40660462 ecap 0x499880f00f4e: scalable mode, no NEST, no FSTS, SLTS, PASID 20 bits, no SLADS/);
    expect(t.out()).to.match(/0000:01:00.0 {2}e1000e {5}role no-pasid {6}0x8086:0x10d3 driver e1000e, group 1/);
    expect(t.out()).to.match(/skip nesting {8}host IOMMU dmar0 has no nesting \(ecap\.NEST=0\)/);
  });

  it('exits 128 on bad usage and on a bad profile, naming the problem', async () => {
    const a = capture();
    expect(await doctorCommand(['--hwpt-flags', '0x1,zz'], a.io)).to.equal(128);
    expect(a.err()).to.match(/^harness doctor: --hwpt-flags: "zz" is not a 32-bit number/);
    const b = capture();
    const bad = join(root, 'bad.yaml');
    writeFileSync(bad, 'name: x\nplatform: vtd\ndevices:\n  - {bdf: 0000:1:00.0, role: pasid}\n');
    expect(await doctorCommand(['--profile', bad], b.io)).to.equal(128);
    expect(b.err()).to.equal(`harness doctor: ${bad}: line 4: devices[0].bdf: "0000:1:00.0" is not a PCI address (DDDD:BB:DD.F)\n`);
  });

  it('runs for real on this machine: `harness doctor --json` says what is missing, with reasons', async () => {
    const r = await execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), 'doctor', '--json', '--profile', 'virtual-lab'], { reject: false });
    expect(r.exitCode, r.stderr).to.equal(0);
    const report = JSON.parse(r.stdout) as { iommu: { instances: unknown[] }; iommufd: { ok: boolean }; prerequisites: Record<string, { ok: boolean; reason: string }> };
    for (const p of Object.values(report.prerequisites)) {
      expect(p.ok).to.be.a('boolean');
      expect(p.reason).to.be.a('string').and.not.equal('');
    }
    if (!report.iommu.instances.length) {
      expect(report.prerequisites.iommu).to.deep.equal({ ok: false, reason: 'no IOMMU in /sys/class/iommu (IOMMU absent or off: intel_iommu=on, iommu.passthrough=0)' });
      expect(report.prerequisites.nesting!.reason).to.equal(report.prerequisites.iommu!.reason);
    }
    if (!report.iommufd.ok) expect(report.prerequisites.iommufd!.reason).to.equal('no /dev/iommu (kernel without CONFIG_IOMMUFD, or the iommufd module is not loaded)');
    // The virtual lab's devices exist only inside L1.
    expect(report.prerequisites.pasidDevice!.ok).to.equal(false);
    expect(report.prerequisites.pasidDevice!.reason).to.match(/^(profile virtual-lab lists no device with role pasid|no device with role pasid exists here \(0000:\S+ does not exist\))$/);
  });
});
