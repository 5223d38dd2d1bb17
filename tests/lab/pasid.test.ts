import * as chai from 'chai';
import { expect } from 'chai';
import { execa } from 'execa';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HwInfo } from '../../harness/host/hwinfo.js';
import { readPciConfig, hostPaths } from '../../harness/host/sysfs.js';
import { summarizeExtCaps } from '../../harness/pci/config.js';
import { profileFromEnv, type ProfileDevice } from '../../harness/host/profile.js';
import type { HostReport, HostPrerequisites } from '../../harness/host/report.js';
import { useLabHost } from '../../harness/lab/fixture.js';
import { hostCapsOf } from '../../harness/lab/lab-host.js';
import { predictHwptAlloc } from '../../harness/host/kernel-model.js';
import { formatHwptFlags, hwptFlagsFromNames, HWPT_ALLOC_FLAGS } from '../../harness/trace/flags.js';
import { oracleViommu, type L2Spec } from '../../harness/lab/l2.js';
import { guestPciFunctionsWithPasid } from '../../harness/lab/guest-pasid.js';
import { skipBecause } from '../../harness/report/skip.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { expectHwpt } from '../../harness/trace/oracle.js';
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

/** IOMMU_HW_CAP_PCI_PASID_EXEC / _PRIV: the kernel enabled PASID with those features. */
const HW_CAP_PASID_EXEC = 0x2;
const HW_CAP_PASID_PRIV = 0x4;

interface Dev extends ProfileDevice {
  cdev: string;
}

describe('PASID: HWPT flags for a PASID-capable device', function () {
  this.timeout(300_000);
  const lab = useLabHost();

  /** A profile device by name (where a role alone does not pick it), or a skip naming it. */
  async function named(ctx: Mocha.Context, name: string): Promise<Dev> {
    const d = lab.host.passThrough.filter((x) => x.name === name);
    return (await lab.host.devices(ctx, d, 1, `host profile ${lab.host.profile.name} lists no device named ${name}`))[0]!;
  }

  /** The PASID device: role pasid whose PASID the kernel enabled (hw info capabilities exec/priv or max_pasid_log2). */
  function pasidDevice(ctx: Mocha.Context): Promise<Dev> {
    return lab.host.device(ctx, 'pasid');
  }

  /** A device without a PASID capability: the synthetic plain endpoint in the virtual lab, else the first no-pasid one. */
  async function noPasidDevice(ctx: Mocha.Context): Promise<Dev> {
    const plain = lab.host.passThrough.filter((x) => x.name === 'plain-endpoint');
    return plain.length ? (await lab.host.devices(ctx, plain, 1, `host profile ${lab.host.profile.name} lists no device named plain-endpoint`))[0]! : lab.host.device(ctx, 'no-pasid');
  }

  const hwInfo = (ctx: Mocha.Context, d: Dev): Promise<HwInfo> => lab.host.hwInfo(ctx, d.cdev);

  function spec(config: string, d: Dev): L2Spec {
    return { config: loadConfig(config), devices: [{ bdf: d.bdf, id: 'hostdev0' }] };
  }

  /**
   * One scenario: QEMU's request equals the oracle's (from the device's own
   * hw info), `mustSet` are flags the series requires in it whatever the host
   * (e.g. NEST_PARENT|PASID), and QEMU acts on the kernel's answer to the
   * oracle's flags, asked directly: an attach at pasid 0 where the kernel
   * grants them (a VT-d host with nesting), a typed failure that frees
   * everything where it refuses (the emulated VT-d).
   */
  async function scenario(ctx: Mocha.Context, config: string, d: Dev, mustSet: string[]) {
    const cfg = loadConfig(config);
    lab.requireConfig(ctx, cfg);
    const hw = await hwInfo(ctx, d);
    const exp = expectHwpt(oracleViommu(cfg), hostCapsOf(hw));
    const direct = await lab.host.kernelAnswer(ctx, d.cdev, exp.parent!.flags);
    const outcome = await lab.launch(spec(config, d));
    const k = lab.host.kprobes;
    writeFileSync(join(lab.machines.artifactsDir, 'kprobes.trace'), k ? k.read() : `no kprobes: ${lab.host.kernelAnswers.ok ? '' : lab.host.kernelAnswers.reason}\n`);
    expect(outcome.model).to.have.requestedPerOracle(exp);
    const must = hwptFlagsFromNames(mustSet);
    expect(exp.parent!.flags & must, `the oracle's ${formatHwptFlags(exp.parent!.flags)} must carry ${formatHwptFlags(must)}`).to.equal(must);
    expect(outcome.model).to.have.requestedHwpt({ flags: exp.parent!.flags, ptKind: 'ioas', hwptType: 0, len: 0 });
    lab.expectActsOnAnswer(outcome, direct, d.bdf);
    return { hw, exp, direct, outcome };
  }

  /** The same launch, and the kernel's answer to QEMU's request (kprobe) against its direct answer. */
  async function kernelSide(ctx: Mocha.Context, config: string, d: Dev) {
    lab.host.requireKernelAnswers(ctx);
    const cfg = loadConfig(config);
    lab.requireConfig(ctx, cfg);
    const exp = expectHwpt(oracleViommu(cfg), hostCapsOf(await hwInfo(ctx, d)));
    const direct = await lab.host.kernelAnswer(ctx, d.cdev, exp.parent!.flags);
    const { model } = await lab.launch(spec(config, d));
    lab.expectKernelAnswered(ctx, model.hwptAllocs.find((h) => h.ptKind === 'ioas'), direct);
  }

  /** The scenarios: title, config, device, the flags the series requires QEMU to set. */
  const SCENARIOS: Array<{ title: string; config: string; device: (ctx: Mocha.Context) => Promise<Dev>; mustSet: string[]; pasid?: boolean }> = [
    { title: 'intel-iommu fsts=on, pasid-bits=20, PASID device: NEST_PARENT|PASID', config: 'intel-iommu-scalable-fsts-pasid', device: pasidDevice, mustSet: ['NEST_PARENT', 'PASID'], pasid: true },
    { title: 'intel-iommu fsts=on, pasid-bits=20, device without PASID: NEST_PARENT, no PASID', config: 'intel-iommu-scalable-fsts-pasid', device: noPasidDevice, mustSet: ['NEST_PARENT'], pasid: false },
    { title: 'intel-iommu fsts=on without pasid-bits, PASID device: NEST_PARENT, no PASID (the vIOMMU does not want PASID attach)', config: 'intel-iommu-scalable-fsts', device: pasidDevice, mustSet: ['NEST_PARENT'] },
    { title: 'intel-iommu fsts=off with pasid-bits=20, PASID device: no nesting parent, no PASID', config: 'intel-iommu-scalable-pasid', device: pasidDevice, mustSet: [] },
    { title: 'no vIOMMU, PASID device: no nesting parent, no PASID', config: 'no-viommu-q35', device: pasidDevice, mustSet: [] },
  ];

  for (const sc of SCENARIOS) {
    it(`${sc.title}: QEMU requests the oracle’s flags and acts on the kernel’s answer`, async function () {
      const d = await sc.device(this);
      if (sc.pasid !== undefined) {
        const hw = await hwInfo(this, d);
        if (sc.pasid) expect(hw.outMaxPasidLog2, `${d.bdf} max_pasid_log2`).to.be.greaterThan(0);
        else expect(hw.outMaxPasidLog2, `${d.bdf} max_pasid_log2`).to.equal(0);
      }
      const { exp } = await scenario(this, sc.config, d, sc.mustSet);
      if (!sc.mustSet.includes('PASID')) expect(exp.parent!.flags & HWPT_ALLOC_FLAGS.PASID, 'no PASID flag').to.equal(0);
      if (!sc.mustSet.includes('NEST_PARENT')) expect(exp.parent!.flags & HWPT_ALLOC_FLAGS.NEST_PARENT, 'no NEST_PARENT flag').to.equal(0);
    });

    it(`${sc.title}: the kernel answers QEMU’s request (kprobe) as it answers it directly`, async function () {
      await kernelSide(this, sc.config, await sc.device(this));
    });
  }

  it('PASID capability without DevCap2 TLP prefix bits: the kernel does not enable PASID (hw info capabilities 0, max_pasid_log2 still 20); QEMU still asks for PASID per max_pasid_log2', async function () {
    const d = await named(this, 'pasid-no-tlp-prefix');
    const cfg = readPciConfig(hostPaths(), d.bdf);
    expect(cfg, `config space of ${d.bdf}`).to.not.equal(undefined);
    const caps = summarizeExtCaps(cfg!);
    expect(caps.pasid, `${d.bdf} PASID capability`).to.not.equal(undefined);
    expect(caps.pasid!.enabled, 'PASID enabled by the kernel').to.equal(false);
    const hw = await hwInfo(this, d);
    expect(hw.outCapabilities & (HW_CAP_PASID_EXEC | HW_CAP_PASID_PRIV), 'PASID exec/priv capabilities').to.equal(0);
    expect(hw.outMaxPasidLog2, 'max_pasid_log2 from the capability’s Max PASID Width').to.equal(caps.pasid!.maxPasidWidth);
    // QEMU looks at max_pasid_log2 only, so the request carries PASID although the device cannot use it.
    await scenario(this, 'intel-iommu-scalable-fsts-pasid', d, ['NEST_PARENT', 'PASID']);
  });
});

describe('PASID: the capability vfio-pci synthesizes for the guest', function () {
  this.timeout(600_000);
  const lab = useLabHost();

  /**
   * intel-iommu with pasid-bits and fsts=off: no nesting parent is asked, so
   * the kernel grants the HWPT on any VT-d and realize completes. Whether
   * vfio-pci then gives the guest a PASID capability is the oracle's
   * synthesizesPasidCap (read from hw/vfio/pci.c): checked in QEMU's trace of
   * a paused L2, and from inside a booted L2 guest, which sees the config
   * space QEMU really emulates.
   */
  const CONFIG = 'intel-iommu-scalable-pasid';

  async function expectation(ctx: Mocha.Context) {
    const cfg = loadConfig(CONFIG);
    lab.requireConfig(ctx, cfg);
    const d = await lab.host.device(ctx, 'pasid');
    const hw = await lab.host.hwInfo(ctx, d.cdev);
    expect(hw.outMaxPasidLog2, `${d.bdf} max_pasid_log2`).to.be.greaterThan(0);
    const exp = expectHwpt(oracleViommu(cfg), hostCapsOf(hw));
    const direct = await lab.host.kernelAnswer(ctx, d.cdev, exp.parent!.flags);
    if (!direct.ok) skipBecause(ctx, `the kernel refuses ${formatHwptFlags(exp.parent!.flags)} for ${d.bdf} (${direct.errno}): realize cannot get as far as the PASID capability`);
    return { cfg, d, exp };
  }

  it('fsts=off, pasid-bits=20, PASID device: QEMU’s trace of a paused L2 shows a synthesized PASID capability exactly when the oracle says so', async function () {
    const { cfg, d, exp } = await expectation(this);
    const outcome = await lab.launch({ config: cfg, devices: [{ bdf: d.bdf, id: 'hostdev0' }] });
    expect(outcome.error, outcome.error?.message).to.equal(undefined);
    expect(outcome.model.pasidCaps.map((c) => c.offset), exp.pasidCapWhy).to.have.length(exp.synthesizesPasidCap ? 1 : 0);
  });

  it('fsts=off, pasid-bits=20, PASID device: a booted L2 guest sees a PASID capability exactly when the oracle says so', async function () {
    const { cfg, d, exp } = await expectation(this);
    const guest = await lab.bootL2Guest(this, { config: cfg, devices: [{ bdf: d.bdf, id: 'hostdev0' }] }, 256);
    const withPasid = await guestPciFunctionsWithPasid(guest.agent);
    if (exp.synthesizesPasidCap) expect(withPasid.map((f) => f.offset), exp.pasidCapWhy).to.include(0xff8);
    else expect(withPasid, exp.pasidCapWhy).to.deep.equal([]);
  });
});

describe('PASID: harness doctor on the lab host', function () {
  this.timeout(120_000);
  const lab = useLabHost();

  /** The flags the doctor asks IOMMU_HWPT_ALLOC for on each bound device. */
  const FLAGS = ['0x0', '0x1', '0x2', '0x4', '0x8', '0x9'];

  it('doctor --json: the PASID device as its config space and hw info show it, the kernel answers available (self-checked), and HWPT_ALLOC answers the kernel model predicts for this IOMMU', async function () {
    // Held by this test first: the doctor reads the hw info of devices bound to vfio-pci.
    const d = await lab.host.device(this, 'pasid');
    const profile = profileFromEnv()!;
    const r = await execa(process.execPath, [join(repoRoot, 'dist', 'harness', 'cli.js'), 'doctor', '--json', '--profile', profile, '--hwpt-flags', FLAGS.join(',')], {
      reject: false,
      timeout: 90_000,
    });
    expect(r.exitCode, `doctor failed: ${r.stderr}`).to.equal(0);
    const report = JSON.parse(r.stdout) as HostReport & { prerequisites: HostPrerequisites };
    writeFileSync(join(lab.machines.artifactsDir, 'doctor.json'), r.stdout);
    const dev = report.devices.find((x) => x.bdf === d.bdf)!;
    const pasid = summarizeExtCaps(readPciConfig(hostPaths(), d.bdf)!).pasid;
    expect(pasid, `${d.bdf} has a PASID capability (its profile role is pasid)`).to.not.equal(undefined);
    expect(dev.extCaps?.pasid, `${d.bdf} PASID capability in the report`).to.deep.equal(pasid);
    expect(pasid!.enabled, 'PASID enabled by the kernel').to.equal(true);
    const hw = await lab.host.hwInfo(this, d.cdev);
    expect(dev.hwInfo, `hw info: ${dev.hwInfo?.reason}`).to.include({ ok: true, outMaxPasidLog2: hw.outMaxPasidLog2, outCapabilities: hw.outCapabilities });
    expect(hw.outMaxPasidLog2, 'max_pasid_log2 = the capability’s Max PASID Width').to.equal(pasid!.maxPasidWidth);
    expect(dev.hwInfo!.capabilities!.includes('PCI_PASID_EXEC'), 'PCI_PASID_EXEC per the capability').to.equal(pasid!.execPermissionSupported);
    expect(dev.hwInfo!.capabilities!.includes('PCI_PASID_PRIV'), 'PCI_PASID_PRIV per the capability').to.equal(pasid!.privilegedModeSupported);
    expect(report.prerequisites.pasidDevice.ok, report.prerequisites.pasidDevice.reason).to.equal(true);
    expect(report.kernelAnswers, 'the doctor reports whether the kernel’s answers are available').to.include({ ok: lab.host.kernelAnswers.ok });
    const answers = Object.fromEntries((dev.hwptAlloc?.results ?? []).map((x) => [x.flags, x.ok ? 'ok' : x.errno]));
    const predicted = Object.fromEntries(FLAGS.map((f) => [f, predictHwptAlloc(hw, Number(f))]));
    if (Object.values(predicted).some((p) => !p)) skipBecause(this, `no kernel model for IOMMU type ${hw.outDataTypeName}: the doctor's answers ${JSON.stringify(answers)} cannot be checked`);
    expect(answers, 'the doctor’s HWPT_ALLOC answers, against the kernel model of this IOMMU').to.deep.equal(
      Object.fromEntries(Object.entries(predicted).map(([f, p]) => [f, p!.ok ? 'ok' : p!.errno])),
    );
  });
});
