import * as chai from 'chai';
import { expect } from 'chai';
import { useLabHost, type LabFixture } from '../../harness/lab/fixture.js';
import { oracleViommu, spareRootPort, vfioPciDevice, type L2Spec } from '../../harness/lab/l2.js';
import { QmpCommandError } from '../../harness/qmp/errors.js';
import { LaunchError } from '../../harness/qemu/machine.js';
import { skipBecause } from '../../harness/report/skip.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { formatHwptFlags } from '../../harness/trace/flags.js';
import { expectHwpt, expectRealizeFailureAfterAlloc } from '../../harness/trace/oracle.js';
import { loadConfig, type ViommuConfig } from '../../harness/viommu/configs.js';

chai.use(iommufdAssertions);

/**
 * Realize errors that QEMU's binary names (facts §2, "[strings]") but that
 * only a host with a real IOMMU and a device on vfio-pci can trigger: each is
 * triggered here for real. intel-iommu runs these checks from
 * pci_device_set_iommu_device, after the device attached to its HWPT: a
 * refused hot-plug must leave detach and free lines behind and nothing
 * allocated; a refused cold-plug ends QEMU (exit 1) with no frees traced. Where the kernel refuses QEMU's HWPT first (the emulated VT-d
 * has no nesting parent for fsts=on), the test says so and asserts that
 * refusal and the frees instead.
 */
describe('realize errors triggered on a real IOMMU', function () {
  this.timeout(300_000);
  const lab = useLabHost();

  async function refused(l: LabFixture, spec: L2Spec) {
    const { error, model } = await l.launch(spec);
    expect(error, 'L2 launch should have failed').to.be.instanceOf(LaunchError);
    return { error: error!, model };
  }

  /** The kernel's direct answer to the oracle's parent flags for `config` on the device. */
  async function direct(ctx: Mocha.Context, config: ViommuConfig, cdev: string) {
    const oracle = expectHwpt(oracleViommu(config), await lab.host.hostCaps(ctx, cdev));
    return { flags: oracle.parent!.flags, answer: await lab.host.kernelAnswer(ctx, cdev, oracle.parent!.flags) };
  }

  it('vfio-pci on the legacy VFIO container (no iommufd=) under intel-iommu fsts=on: “Need IOMMUFD backend when fsts=on”, no iommufd object touched', async function () {
    const dev = await lab.host.device(this, 'no-pasid');
    const config = loadConfig('intel-iommu-scalable-fsts');
    lab.requireConfig(this, config);
    const { error, model } = await refused(lab, {
      config,
      spareRootPorts: 1,
      extraDevices: [{ driver: 'vfio-pci', id: 'hostdev0', bus: 'rp0', host: dev.bdf }],
    });
    expect(error.stderr).to.match(/Need IOMMUFD backend when (fsts|x-flts)=on/);
    expect(model.hwptAllocs, 'a legacy container asks iommufd for nothing').to.have.length(0);
    expect(model).to.have.freedEverything();
  });

  it('vfio-pci cold-plugged under intel-iommu without caching-mode: refused after the HWPT was allocated and attached; QEMU exits 1 (no frees traced: the kernel reclaims at exit)', async function () {
    const dev = await lab.host.device(this, 'no-pasid');
    const config = loadConfig('intel-iommu-legacy');
    lab.requireConfig(this, config);
    const d = await direct(this, config, dev.cdev);
    const { error, model } = await refused(lab, { config, devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
    expect(model).to.have.requestedHwpt({ flags: d.flags, ptKind: 'ioas' });
    if (!d.answer.ok) {
      expect(error.stderr).to.include('Failed to allocate hwpt');
      expect(model).to.have.freedEverything();
      skipBecause(this, `the kernel refuses ${formatHwptFlags(d.flags)} for ${dev.bdf} (${d.answer.errno}, asked directly), before QEMU checks caching-mode (that refusal and the frees were asserted)`);
    }
    expect(error.stderr).to.include('Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU');
    expect(error.exit?.code, 'QEMU exits 1').to.equal(1);
    expect(model).to.have.realizeFailedAfterAlloc(expectRealizeFailureAfterAlloc({ hotplug: false }), { devId: model.devIdOf(dev.bdf)! });
  });

  it('vfio-pci hot-plugged under intel-iommu without caching-mode: device_add fails naming caching-mode, after the alloc and attach; detached, HWPT and IOAS freed', async function () {
    const dev = await lab.host.device(this, 'no-pasid');
    const config = loadConfig('intel-iommu-legacy');
    lab.requireConfig(this, config);
    const d = await direct(this, config, dev.cdev);
    if (!d.answer.ok) skipBecause(this, `the kernel refuses ${formatHwptFlags(d.flags)} for ${dev.bdf} (${d.answer.errno}, asked directly): the caching-mode check is never reached`);
    const spec: L2Spec = { config, spareRootPorts: 1 };
    const m = await lab.launchL2(spec);
    const err = await m.qmp.deviceAdd(vfioPciDevice({ bdf: dev.bdf, id: 'hp0' }, spareRootPort(spec)) as never).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpCommandError);
    const desc = (err as QmpCommandError).desc;
    expect(desc).to.include('Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU');
    const model = await lab.model(m);
    model.addQemuMessages(desc, 'qmp');
    expect(model).to.have.realizeFailedAfterAlloc(expectRealizeFailureAfterAlloc({ hotplug: true }), { devId: model.devIdOf(dev.bdf)! });
    expect(model).to.have.freedEverything();
  });

  it('intel-iommu fsts=on with more PASID bits than the host IOMMU: “PASID bits size N > host IOMMU PASID bits size M” (or the kernel’s refusal first)', async function () {
    const dev = await lab.host.device(this, 'pasid');
    const hw = await lab.host.hwInfo(this, dev.cdev);
    if (!hw.vtd) skipBecause(this, `${dev.bdf} is behind a ${hw.outDataTypeName} IOMMU, not VT-d`);
    // ecap.PSS (bits 39:35) + 1 is the host's PASID width; QEMU checks it only for a device with PASID.
    const hostBits = Number((hw.vtd!.ecapReg >> 35n) & 0x1fn) + 1;
    if (hostBits >= 20) skipBecause(this, `the host IOMMU behind ${dev.bdf} has ${hostBits} PASID bits, the most QEMU's pasid-bits allows (20): no guest width can exceed it`);
    const base = loadConfig('intel-iommu-scalable-fsts-pasid');
    const config: ViommuConfig = { ...base, viommu: { ...base.viommu!, features: { ...base.viommu!.features, pasidBits: hostBits + 1 } } };
    lab.requireConfig(this, config);
    const d = await direct(this, config, dev.cdev);
    const { error, model } = await refused(lab, { config, devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
    expect(model).to.have.freedEverything();
    if (!d.answer.ok) {
      expect(error.stderr).to.include('Failed to allocate hwpt');
      skipBecause(this, `the kernel refuses ${formatHwptFlags(d.flags)} for ${dev.bdf} (${d.answer.errno}, asked directly), before QEMU compares PASID widths (that refusal and the frees were asserted)`);
    }
    expect(error.stderr).to.include(`PASID bits size ${hostBits + 1} > host IOMMU PASID bits size ${hostBits}`);
  });
});

/**
 * arm-smmuv3 accel=on refusals that only a QEMU under KVM (with an in-kernel
 * irqchip) reaches: under TCG realize stops earlier at "SMMUv3 accel=on
 * requires KVM" (tests/qemu/viommu-realize.test.ts). The explicit-properties
 * config keeps the auto properties' own refusal (no cold-plugged VFIO
 * device, exit from smmuv3_accel_machine_done; the matrix's hot-plug test)
 * out of the way. Each is a cold-plug refusal: QEMU exits 1, having asked
 * iommufd for nothing.
 */
describe('arm-smmuv3 accel=on realize errors under KVM', function () {
  this.timeout(300_000);
  const lab = useLabHost();
  const config = loadConfig('arm-smmuv3-accel-explicit');

  async function refusedBefore(spec: L2Spec, message: string) {
    const { error, model } = await lab.launch(spec);
    expect(error, 'L2 launch should have failed').to.be.instanceOf(LaunchError);
    expect(error!.stderr).to.include(message);
    expect(error!.exit?.code, 'QEMU exits 1').to.equal(1);
    expect(model.hwptAllocs, 'refused before any HWPT request').to.have.length(0);
    expect(model.viommus, 'refused before any vIOMMU').to.have.length(0);
    expect(model).to.have.freedEverything();
  }

  it('a device-tree boot (-machine acpi=off): “SMMUv3 with accel=on not supported for DT”', async function () {
    lab.requireConfig(this, config);
    // The SMMU is described to the guest by ACPI IORT only; virt refuses it where there will be no ACPI tables.
    const dt: ViommuConfig = { ...config, machine: { ...config.machine, props: { ...config.machine.props, acpi: 'off' } } };
    await refusedBefore({ config: dt, spareRootPorts: 1 }, 'SMMUv3 with accel=on not supported for DT');
  });

  it('an emulated endpoint (e1000e) behind the accel SMMU: “Emulated endpoint devices are not allowed when using arm-smmuv3,accel=on”', async function () {
    lab.requireConfig(this, config);
    // smmuv3_accel_supports_as admits bridges, pxb-pcie and the GPEX root only, and vfio-pci with an iommufd backend.
    await refusedBefore(
      { config, spareRootPorts: 1, extraDevices: [{ driver: 'e1000e', id: 'emul0', bus: 'rp0', romfile: '' }] },
      'Emulated endpoint devices are not allowed when using arm-smmuv3,accel=on',
    );
  });

  it('vfio-pci on the legacy VFIO container (no iommufd=) behind the accel SMMU: “vfio-pci endpoint devices without an iommufd backend not allowed”', async function () {
    lab.requireConfig(this, config);
    const dev = await lab.host.device(this, 'no-pasid');
    await refusedBefore(
      { config, spareRootPorts: 1, extraDevices: [{ driver: 'vfio-pci', id: 'hostdev0', bus: 'rp0', host: dev.bdf }] },
      'vfio-pci endpoint devices without an iommufd backend not allowed when using arm-smmuv3,accel=on',
    );
  });
});
