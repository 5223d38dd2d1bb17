import * as chai from 'chai';
import { expect } from 'chai';
import { useLabHost, type LabFixture } from '../../harness/lab/fixture.js';
import { fdCount, oracleViommu, spareRootPort, vfioPciDevice, type L2Spec } from '../../harness/lab/l2.js';
import { LaunchError } from '../../harness/qemu/machine.js';
import { QmpCommandError } from '../../harness/qmp/errors.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { skipBecause } from '../../harness/report/skip.js';
import { loadConfig, type ViommuConfig } from '../../harness/viommu/configs.js';
import { expectHwpt } from '../../harness/trace/oracle.js';
import { formatHwptFlags } from '../../harness/trace/flags.js';

chai.use(iommufdAssertions);

/** A launch that must fail: the error, and the model of the trace it left. */
async function failedLaunch(lab: LabFixture, spec: L2Spec) {
  const { error, model } = await lab.launch(spec);
  expect(error, 'L2 launch should have failed').to.be.instanceOf(LaunchError);
  return { error: error!, model };
}

/**
 * What QEMU asks of iommufd for one vfio-pci device, read from QEMU's own
 * trace and the kernel's answer from kprobes, on a host with a real IOMMU
 * (the virtual lab's L1, or a lab machine).
 */
describe('iommufd: HWPTs for vfio-pci devices', function () {
  this.timeout(300_000);
  const lab = useLabHost();

  /** The oracle's parent flags for `config` and the device, and the kernel's direct answer to them. */
  async function expectations(ctx: Mocha.Context, config: ViommuConfig, dev: { cdev: string }) {
    lab.requireConfig(ctx, config);
    const oracle = expectHwpt(oracleViommu(config), await lab.host.hostCaps(ctx, dev.cdev));
    return { oracle, direct: await lab.host.kernelAnswer(ctx, dev.cdev, oracle.parent!.flags) };
  }

  for (const name of ['no-viommu-q35', 'intel-iommu-scalable-fsts']) {
    it(`${name}: QEMU requests the oracle’s flags on the IOAS and acts on the kernel’s direct answer (attach at pasid 0, or a typed failure that frees the IOAS)`, async function () {
      const dev = await lab.host.device(this, 'no-pasid');
      const config = loadConfig(name);
      const { oracle, direct } = await expectations(this, config, dev);
      const outcome = await lab.launch({ config, devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
      expect(outcome.model).to.have.requestedPerOracle(oracle);
      expect(outcome.model).to.have.requestedHwpt({ flags: oracle.parent!.flags, ptKind: 'ioas', hwptType: 0, len: 0 });
      lab.expectActsOnAnswer(outcome, direct, dev.bdf);
    });

    it(`${name}: the kernel answers QEMU’s request (kprobe) as it answers it directly`, async function () {
      lab.host.requireKernelAnswers(this);
      const dev = await lab.host.device(this, 'no-pasid');
      const config = loadConfig(name);
      const { direct } = await expectations(this, config, dev);
      const { model } = await lab.launch({ config, devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
      const req = model.hwptAllocs.find((h) => h.ptKind === 'ioas');
      lab.expectKernelAnswered(this, req, direct);
    });
  }

  it('hot-plug: device_add allocates and attaches, device_del detaches and frees the HWPT and the IOAS; 50 cycles leak no id and no fd', async function () {
    const dev = await lab.host.device(this, 'no-pasid');
    const spec: L2Spec = { config: loadConfig('no-viommu-q35'), spareRootPorts: 1 };
    lab.requireConfig(this, spec.config);
    const m = await lab.launchL2(spec);
    const bus = spareRootPort(spec);
    const cycle = async (i: number) => {
      await m.qmp.deviceAdd(vfioPciDevice({ bdf: dev.bdf, id: `hp${i}` }, bus) as never);
      await m.qmp.deviceDel(`hp${i}`, 10_000);
    };
    await cycle(0);
    const fds = await fdCount(m.pid);
    for (let i = 1; i < 50; i++) await cycle(i);
    expect(await fdCount(m.pid), 'QEMU fds after 50 cycles').to.equal(fds);
    const model = await lab.model(m);
    expect(model.hwptAllocs).to.have.length(50);
    expect(model.detaches.length, 'detaches').to.equal(50);
    expect(model).to.have.freedEverything();
  });

  it('hot-plug under intel-iommu fsts=on: device_add attaches and device_del frees where the kernel grants the oracle’s flags; else it fails typed, leaving nothing allocated', async function () {
    const dev = await lab.host.device(this, 'no-pasid');
    const config = loadConfig('intel-iommu-scalable-fsts');
    const { oracle, direct } = await expectations(this, config, dev);
    const spec: L2Spec = { config, spareRootPorts: 1 };
    const m = await lab.launchL2(spec);
    const add = m.qmp.deviceAdd(vfioPciDevice({ bdf: dev.bdf, id: 'hp0' }, spareRootPort(spec)) as never);
    if (direct.ok) {
      await add;
      await m.qmp.deviceDel('hp0', 10_000);
    } else {
      const err = await add.catch((e: unknown) => e);
      expect(err).to.be.instanceOf(QmpCommandError);
      expect((err as QmpCommandError).desc).to.include('Failed to allocate hwpt');
    }
    const model = await lab.model(m);
    expect(model).to.have.requestedHwpt({ flags: oracle.parent!.flags });
    expect(model).to.have.freedEverything();
  });
});

describe('iommufd: several devices, bridges', function () {
  this.timeout(300_000);
  const lab = useLabHost();

  async function twoDevices(ctx: Mocha.Context) {
    const among = lab.host.passThrough.filter((d) => d.role !== 'behind-bridge');
    const ds = await lab.host.devices(ctx, among, 2, `host profile ${lab.host.profile.name} lists fewer than two devices to pass through`);
    return ds.map((d, i) => ({ bdf: d.bdf, id: `hostdev${i}` }));
  }

  it('no vIOMMU, two devices: one container; the second device reuses the first one’s HWPT (an attach, no second allocation)', async function () {
    const devices = await twoDevices(this);
    const config = loadConfig('no-viommu-q35');
    lab.requireConfig(this, config);
    const model = await lab.model(await lab.launchL2({ config, devices }));
    expect(model.hwptAllocs, 'HWPT allocations').to.have.length(1);
    expect(model.objects.filter((o) => o.kind === 'ioas'), 'IOAS').to.have.length(1);
    const [a, b] = devices.map((d) => model.attaches.find((x) => x.name === d.bdf));
    expect(a, 'first attach').to.not.equal(undefined);
    expect(b, 'second attach').to.not.equal(undefined);
    expect(b!.targetId).to.equal(a!.targetId);
  });

  it('intel-iommu, two devices: each device has its own DMA address space behind the vIOMMU, so its own container, IOAS and HWPT', async function () {
    const devices = await twoDevices(this);
    const config = loadConfig('intel-iommu-caching-mode');
    lab.requireConfig(this, config);
    const model = await lab.model(await lab.launchL2({ config, devices }));
    expect(model.objects.filter((o) => o.kind === 'ioas'), 'IOAS').to.have.length(2);
    expect(model.hwptAllocs, 'HWPT allocations').to.have.length(2);
    expect(new Set(model.hwptAllocs.map((h) => h.ptId)).size, 'distinct IOAS parents').to.equal(2);
    expect(new Set(model.attaches.map((a) => a.targetId)).size, 'distinct attach targets').to.equal(2);
  });

  it('arm-smmuv3 accel=on, two devices behind one vSMMU: one vIOMMU and one abort/bypass pair, made for the first device; the second reuses its parent HWPT and is reset onto its bypass HWPT', async function () {
    const config = loadConfig('arm-smmuv3-accel');
    lab.requireConfig(this, config);
    const among = lab.host.passThrough.filter((d) => d.role !== 'behind-bridge');
    const [first, second] = await lab.host.devices(this, among, 2, `host profile ${lab.host.profile.name} lists fewer than two devices to pass through`);
    const devices = [first!, second!].map((d, i) => ({ bdf: d.bdf, id: `hostdev${i}` }));
    const caps = [await lab.host.hostCaps(this, first!.cdev), await lab.host.hostCaps(this, second!.cdev)];
    const oracle1 = expectHwpt(oracleViommu(config), caps[0]!);
    const oracle2 = expectHwpt(oracleViommu(config), caps[1]!, { secondDevice: true });
    const model = await lab.model(await lab.launchL2({ config, devices }));
    const [id1, id2] = [model.devIdOf(first!.bdf)!, model.devIdOf(second!.bdf)!];
    // smmuv3_accel_set_iommu_device: the first device allocates the vIOMMU (smmuv3_accel_alloc_viommu)...
    expect(model).to.have.smmuAccelSequence(oracle1, { devId: id1 });
    // ...a later one finds s_accel->viommu and only joins the device list: no vIOMMU, no abort/bypass of its own.
    expect(oracle2.smmu!.allocatesViommu).to.equal(false);
    expect(model.viommus.map((v) => v.devId), 'alloc_viommu lines (dev_id)').to.deep.equal([id1]);
    const viommu = model.viommus[0]!;
    expect(model.hwptAllocs.filter((h) => h.ptKind === 'viommu').map((h) => h.devId), 'HWPTs on the vIOMMU (dev_id)').to.deep.equal([id1, id1]);
    // Both sit in shared_as_sysmem (smmuv3_accel_find_add_as), so one container: the second
    // device attaches to the first one's nesting parent where the kernel lets it (the same host SMMU).
    expect(model).to.have.requestedPerOracle(oracle2, { devId: id2 });
    const parent = model.hwptAllocs.find((h) => h.devId === id1 && h.role === 'parent' && h.ok)!;
    expect(viommu.hwptId, 'the vIOMMU on the first device’s parent').to.equal(parent.id);
    expect(model.smmuDevices.filter((d) => d.op === 'set').map((d) => d.devId), 'smmuv3_accel_set_iommu_device (devid)').to.have.members([id1, id2]);
    // System reset (smmuv3_accel_reset → smmuv3_accel_attach_gbpa_hwpt) attaches every device
    // of the list to the HWPT GBPA names: bypass after reset. The second device's last attach is there.
    const bypass = model.hwptAllocs.filter((h) => h.ptKind === 'viommu' && h.ptId === viommu.id)[1]!;
    const last = model.attaches.filter((a) => a.devId === id2).at(-1);
    expect(last?.targetId, `the second device's last attach (${JSON.stringify(model.attaches.map((a) => [a.devId, a.targetId]))})`).to.equal(bypass.id);
  });

  it('fsts=on, device behind a conventional PCI bridge: refused with the bridge message where the kernel grants the nesting parent; else the kernel’s refusal comes first', async function () {
    const dev = await lab.host.device(this, 'no-pasid');
    const config = loadConfig('intel-iommu-scalable-fsts');
    lab.requireConfig(this, config);
    const oracle = expectHwpt(oracleViommu(config), await lab.host.hostCaps(this, dev.cdev));
    const direct = await lab.host.kernelAnswer(this, dev.cdev, oracle.parent!.flags);
    const spec: L2Spec = {
      config,
      extraDevices: [
        { driver: 'pcie-pci-bridge', id: 'br0', bus: 'pcie.0' },
        vfioPciDevice({ bdf: dev.bdf, id: 'hostdev0' }, 'br0'),
      ],
    };
    const { error: e, model } = await failedLaunch(lab, spec);
    expect(model).to.have.requestedHwpt({ flags: oracle.parent!.flags });
    expect(model).to.have.freedEverything();
    if (!direct.ok) {
      // Realize allocates the HWPT before the vIOMMU checks the topology, so a
      // kernel that refuses the nesting parent answers before the bridge check runs.
      expect(e.stderr).to.include('Failed to allocate hwpt');
      skipBecause(this, `the kernel refuses ${formatHwptFlags(oracle.parent!.flags)} for ${dev.bdf} (${direct.errno}, asked directly), so it answers before QEMU checks for the PCI bridge (that refusal and the frees were asserted)`);
    }
    expect(e.stderr).to.match(/Host device downstream to a PCI bridge is unsupported when (fsts|x-flts|flts)=on/);
  });
});
