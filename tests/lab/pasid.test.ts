import * as chai from 'chai';
import { expect } from 'chai';
import { execa } from 'execa';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { summarizeVtd } from '../../harness/guest/vtd-regs.js';
import type { HwInfo } from '../../harness/host/hwinfo.js';
import { readPciConfig, hostPaths } from '../../harness/host/sysfs.js';
import { summarizeExtCaps } from '../../harness/host/pci-config.js';
import { profileFromEnv, type ProfileDevice } from '../../harness/host/profile.js';
import type { HostReport, HostPrerequisites } from '../../harness/host/report.js';
import { useLabHost } from '../../harness/lab/fixture.js';
import { oracleViommu, type L2Spec } from '../../harness/lab/l2.js';
import { LaunchError } from '../../harness/qemu/machine.js';
import { skipBecause } from '../../harness/report/skip.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { expectHwpt, type HostCaps } from '../../harness/trace/oracle.js';
import { repoRoot } from '../../harness/util/paths.js';
import { loadConfig } from '../../harness/viommu/configs.js';

chai.use(iommufdAssertions);

/**
 * PASID and the HWPT flags QEMU asks for, with a device that has a PCIe PASID
 * capability the host kernel enabled: in the virtual lab the synthetic
 * vfio-user endpoints (qemu-configs/hosts/virtual-lab.yaml), on a lab machine
 * its profile's `pasid` device. QEMU's request is read from its trace, the
 * kernel's answer from kprobes, the host's capabilities from
 * IOMMU_GET_HW_INFO of the device's own cdev, and the oracle (facts §3)
 * must agree with the trace.
 */

const EOPNOTSUPP = -95;

interface Dev extends ProfileDevice {
  cdev: string;
}

describe('PASID: HWPT flags for a PASID-capable device', function () {
  this.timeout(300_000);
  const lab = useLabHost();

  /** A profile device by name (where a role alone does not pick it), or a skip naming it. */
  function named(ctx: Mocha.Context, name: string): Dev {
    const d = lab.host.profile.devices.find((x) => x.name === name);
    if (!d) return skipBecause(ctx, `host profile ${lab.host.profile.name} lists no device named ${name}`);
    const b = lab.host.bound.get(d.bdf);
    if (!b) return skipBecause(ctx, `${name} (${d.bdf}) is not bound to vfio-pci`);
    return { ...d, cdev: b.cdev };
  }

  /** The PASID device: role pasid whose PASID the kernel enabled (hw info capabilities exec/priv or max_pasid_log2). */
  function pasidDevice(ctx: Mocha.Context): Dev {
    return lab.host.device(ctx, 'pasid');
  }

  /** A device without a PASID capability: the synthetic plain endpoint in the virtual lab, else the first no-pasid one. */
  function noPasidDevice(ctx: Mocha.Context): Dev {
    const plain = lab.host.profile.devices.find((x) => x.name === 'plain-endpoint' && lab.host.bound.has(x.bdf));
    return plain ? { ...plain, cdev: lab.host.bound.get(plain.bdf)!.cdev } : lab.host.device(ctx, 'no-pasid');
  }

  const hwInfo = (ctx: Mocha.Context, d: Dev): Promise<HwInfo> => lab.host.hwInfo(ctx, d.cdev);

  const capsOf = (hw: HwInfo): HostCaps => ({ dirtyTracking: hw.capabilityNames.includes('DIRTY_TRACKING'), maxPasidLog2: hw.outMaxPasidLog2 });
  const nesting = (hw: HwInfo): boolean => (hw.vtd ? summarizeVtd(hw.vtd.capReg, hw.vtd.ecapReg).nested : false);

  function spec(config: string, d: Dev): L2Spec {
    return { config: loadConfig(config), devices: [{ bdf: d.bdf, id: 'hostdev0' }] };
  }

  /**
   * One scenario: QEMU's request equals the oracle's (from the device's own hw
   * info), and the kernel answers it as this host's IOMMU can: nesting
   * requests are refused with EOPNOTSUPP where the IOMMU has no nesting (the
   * emulated VT-d), and everything else is granted and attached at pasid 0.
   */
  async function scenario(ctx: Mocha.Context, config: string, d: Dev, want: { flags: string[] }) {
    const hw = await hwInfo(ctx, d);
    const exp = expectHwpt(oracleViommu(loadConfig(config)), capsOf(hw));
    const { error, model } = await lab.launch(spec(config, d));
    if (lab.host.kprobes) writeFileSync(join(lab.machines.artifactsDir, 'kprobes.trace'), lab.host.kprobes!.read());
    expect(model).to.have.requestedPerOracle(exp);
    expect(model).to.have.requestedHwpt({ flags: want.flags, ptKind: 'ioas', hwptType: 0, len: 0 });
    const refused = want.flags.includes('NEST_PARENT') && !nesting(hw);
    const answer = model.hwptAllocs[0]?.kernel;
    if (lab.host.kprobes) expect(answer, `no kernel answer joined; kprobe records: ${JSON.stringify(lab.kernel())}`).to.not.equal(undefined);
    if (refused) {
      expect(error, 'L2 launch should fail: the kernel refuses the nesting parent').to.be.instanceOf(LaunchError);
      expect(error!.stderr).to.include(`vfio ${d.bdf}: Failed to allocate hwpt: Operation not supported`);
      // QEMU 11.1.3 traces the ioctl's -1; the errno is in its message and in the kernel's answer.
      expect(model.hwptAllocs.every((h) => h.ret < 0), 'QEMU saw the allocation fail').to.equal(true);
      if (answer) {
        expect(answer.fields.ret, 'iommufd_hwpt_alloc return').to.equal(EOPNOTSUPP);
        // The refusal is the VT-d driver's, not one of iommufd's own checks.
        if (answer.fields.vendor !== undefined) expect(answer.fields.vendor_ret, `${String(answer.fields.vendor)} return`).to.equal(EOPNOTSUPP);
      }
      expect(model).to.have.freedEverything();
    } else {
      expect(error, `L2 launch failed: ${error?.message}`).to.equal(undefined);
      expect(model).to.have.allocatedHwpt({ flags: want.flags, ptKind: 'ioas' });
      expect(model).to.have.attached({ pasid: 0, name: d.bdf, targetKind: 'hwpt' });
      if (answer) expect(answer.fields.ret, 'iommufd_hwpt_alloc return').to.equal(0);
    }
    return { hw, exp, model, answer };
  }

  it('intel-iommu fsts=on, pasid-bits=20, PASID device: QEMU requests NEST_PARENT|PASID (0x9); the kernel refuses with EOPNOTSUPP; the oracle agrees', async function () {
    const d = pasidDevice(this);
    const hw = await hwInfo(this, d);
    expect(hw.outMaxPasidLog2, `${d.bdf} max_pasid_log2`).to.be.greaterThan(0);
    const { exp } = await scenario(this, 'intel-iommu-scalable-fsts-pasid', d, { flags: ['NEST_PARENT', 'PASID'] });
    expect(exp.parent!.flags & 0x9).to.equal(0x9);
  });

  it('intel-iommu fsts=on, pasid-bits=20, device without PASID: NEST_PARENT only (0x1), the oracle agrees', async function () {
    const d = noPasidDevice(this);
    const hw = await hwInfo(this, d);
    expect(hw.outMaxPasidLog2, `${d.bdf} max_pasid_log2`).to.equal(0);
    await scenario(this, 'intel-iommu-scalable-fsts-pasid', d, { flags: ['NEST_PARENT'] });
  });

  it('intel-iommu fsts=on without pasid-bits, PASID device: NEST_PARENT only (0x1): the vIOMMU does not want PASID attach', async function () {
    await scenario(this, 'intel-iommu-scalable-fsts', pasidDevice(this), { flags: ['NEST_PARENT'] });
  });

  it('intel-iommu fsts=off with pasid-bits=20, PASID device: flags 0, accepted, attached at pasid 0', async function () {
    await scenario(this, 'intel-iommu-scalable-pasid', pasidDevice(this), { flags: [] });
  });

  it('no vIOMMU, PASID device: flags 0, accepted, attached at pasid 0', async function () {
    await scenario(this, 'no-viommu-q35', pasidDevice(this), { flags: [] });
  });

  it('PASID capability without DevCap2 TLP prefix bits: the kernel does not enable PASID (hw info capabilities 0, max_pasid_log2 still 20); QEMU still asks for PASID per max_pasid_log2', async function () {
    const d = named(this, 'pasid-no-tlp-prefix');
    const cfg = readPciConfig(hostPaths(), d.bdf);
    expect(cfg, `config space of ${d.bdf}`).to.not.equal(undefined);
    const caps = summarizeExtCaps(cfg!);
    expect(caps.pasid, `${d.bdf} PASID capability`).to.not.equal(undefined);
    expect(caps.pasid!.enabled, 'PASID enabled by the kernel').to.equal(false);
    const hw = await hwInfo(this, d);
    expect({ caps: hw.outCapabilities, maxPasidLog2: hw.outMaxPasidLog2 }).to.deep.equal({ caps: 0, maxPasidLog2: 20 });
    // QEMU looks at max_pasid_log2 only, so the request carries PASID although the device cannot use it.
    await scenario(this, 'intel-iommu-scalable-fsts-pasid', d, { flags: ['NEST_PARENT', 'PASID'] });
  });
});

describe('PASID: harness doctor on the lab host', function () {
  this.timeout(120_000);
  const lab = useLabHost();

  /** The flags the doctor asks IOMMU_HWPT_ALLOC for on each bound device. */
  const FLAGS = ['0x0', '0x1', '0x2', '0x4', '0x8', '0x9'];

  it('doctor --json shows the PASID device: PASID capability enabled, max_pasid_log2=20, capabilities 0x6 (exec|priv); HWPT_ALLOC answers per the host IOMMU', async function () {
    const profile = profileFromEnv()!;
    const r = await execa(process.execPath, [join(repoRoot, 'dist', 'harness', 'cli.js'), 'doctor', '--json', '--profile', profile, '--hwpt-flags', FLAGS.join(',')], {
      reject: false,
      timeout: 90_000,
    });
    expect(r.exitCode, `doctor failed: ${r.stderr}`).to.equal(0);
    const report = JSON.parse(r.stdout) as HostReport & { prerequisites: HostPrerequisites };
    writeFileSync(join(lab.machines.artifactsDir, 'doctor.json'), r.stdout);
    const d = lab.host.device(this, 'pasid');
    const dev = report.devices.find((x) => x.bdf === d.bdf)!;
    expect(dev.extCaps?.pasid, `${d.bdf} PASID capability in the report`).to.include({ maxPasidWidth: 20, enabled: true, execPermissionSupported: true, privilegedModeSupported: true });
    expect(dev.hwInfo, `hw info: ${dev.hwInfo?.reason}`).to.include({ ok: true, outMaxPasidLog2: 20, outCapabilities: 0x6 });
    expect(dev.hwInfo!.capabilities).to.deep.equal(['PCI_PASID_EXEC', 'PCI_PASID_PRIV']);
    expect(report.prerequisites.pasidDevice.ok, report.prerequisites.pasidDevice.reason).to.equal(true);
    const answers = Object.fromEntries((dev.hwptAlloc?.results ?? []).map((x) => [x.flags, x.ok ? 'ok' : x.errno]));
    if (!process.env.HARNESS_VIRTUAL_LAB) skipBecause(this, `HWPT_ALLOC answers are known for the virtual lab's emulated VT-d only; here: ${JSON.stringify(answers)}`);
    // The emulated VT-d (facts §9): no nesting and no dirty tracking; FAULT_ID_VALID with fault_id 0 names no fault object.
    expect(answers).to.deep.equal({ '0x0': 'ok', '0x1': 'EOPNOTSUPP', '0x2': 'EOPNOTSUPP', '0x4': 'ENOENT', '0x8': 'ok', '0x9': 'EOPNOTSUPP' });
  });
});
