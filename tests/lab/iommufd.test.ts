import * as chai from 'chai';
import { expect } from 'chai';
import { useLabHost, type LabFixture } from '../../harness/lab/fixture.js';
import { fdCount, spareRootPort, vfioPciDevice, type L2Spec } from '../../harness/lab/l2.js';
import { LaunchError } from '../../harness/qemu/machine.js';
import { QmpCommandError } from '../../harness/qmp/errors.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { skipBecause } from '../../harness/report/skip.js';
import { loadConfig } from '../../harness/viommu/configs.js';

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

  it('no vIOMMU: allocates an HWPT with flags 0x0 on the IOAS, attaches pasid 0, the kernel accepts', async function () {
    const dev = lab.host.device(this, 'no-pasid');
    const m = await lab.launchL2({ config: loadConfig('no-viommu-q35'), devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
    const model = await lab.model(m);
    expect(model).to.have.allocatedHwpt({ flags: [], ptKind: 'ioas' });
    expect(model).to.have.attached({ pasid: 0, name: dev.bdf, targetKind: 'hwpt' });
    if (lab.host.kprobes) expect(model.hwptAllocs[0]!.kernel?.fields.ret, 'kernel answer').to.equal(0);
  });

  it('intel-iommu fsts=on: QEMU requests NEST_PARENT, the kernel refuses with EOPNOTSUPP, the launch fails typed, the IOAS is freed', async function () {
    const dev = lab.host.device(this, 'no-pasid');
    const { error, model } = await failedLaunch(lab, { config: loadConfig('intel-iommu-scalable-fsts'), devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
    expect(error.stderr).to.include(`vfio ${dev.bdf}: Failed to allocate hwpt: Operation not supported`);
    expect(model).to.have.requestedHwpt({ flags: ['NEST_PARENT'], ptKind: 'ioas' });
    expect(model.hwptAllocs.every((h) => h.ret < 0), 'QEMU saw the allocation fail').to.equal(true);
    if (lab.host.kprobes) {
      const answer = model.hwptAllocs[0]!.kernel;
      expect(answer, `no kernel answer joined; kprobe records: ${JSON.stringify(lab.kernel())}`).to.not.equal(undefined);
      expect(answer!.fields).to.include({ ret: -95, vendor_ret: -95 });
    }
    expect(model).to.have.freedEverything();
  });

  it('hot-plug: device_add allocates and attaches, device_del detaches and frees the HWPT and the IOAS; 50 cycles leak no id and no fd', async function () {
    const dev = lab.host.device(this, 'no-pasid');
    const spec: L2Spec = { config: loadConfig('no-viommu-q35'), spareRootPorts: 1 };
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

  it('hot-plug under intel-iommu fsts=on: device_add fails with the kernel’s refusal, typed, and leaves nothing allocated', async function () {
    const dev = lab.host.device(this, 'no-pasid');
    const spec: L2Spec = { config: loadConfig('intel-iommu-scalable-fsts'), spareRootPorts: 1 };
    const m = await lab.launchL2(spec);
    const err = await m.qmp.deviceAdd(vfioPciDevice({ bdf: dev.bdf, id: 'hp0' }, spareRootPort(spec)) as never).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpCommandError);
    expect((err as QmpCommandError).desc).to.include('Failed to allocate hwpt: Operation not supported');
    const model = await lab.model(m);
    expect(model).to.have.requestedHwpt({ flags: ['NEST_PARENT'] });
    expect(model).to.have.freedEverything();
  });
});

describe('iommufd: several devices, bridges', function () {
  this.timeout(300_000);
  const lab = useLabHost();

  function twoDevices(ctx: Mocha.Context) {
    const ds = [...lab.host.profile.devices].filter((d) => lab.host.bound.has(d.bdf) && d.role !== 'behind-bridge').slice(0, 2);
    if (ds.length < 2) skipBecause(ctx, `host profile ${lab.host.profile.name} lists fewer than two devices to pass through`);
    return ds.map((d, i) => ({ bdf: d.bdf, id: `hostdev${i}` }));
  }

  it('no vIOMMU, two devices: one container; the second device reuses the first one’s HWPT (an attach, no second allocation)', async function () {
    const devices = twoDevices(this);
    const model = await lab.model(await lab.launchL2({ config: loadConfig('no-viommu-q35'), devices }));
    expect(model.hwptAllocs, 'HWPT allocations').to.have.length(1);
    expect(model.objects.filter((o) => o.kind === 'ioas'), 'IOAS').to.have.length(1);
    const [a, b] = devices.map((d) => model.attaches.find((x) => x.name === d.bdf));
    expect(a, 'first attach').to.not.equal(undefined);
    expect(b, 'second attach').to.not.equal(undefined);
    expect(b!.targetId).to.equal(a!.targetId);
  });

  it('intel-iommu, two devices: each device has its own DMA address space behind the vIOMMU, so its own container, IOAS and HWPT', async function () {
    const devices = twoDevices(this);
    const model = await lab.model(await lab.launchL2({ config: loadConfig('intel-iommu-caching-mode'), devices }));
    expect(model.objects.filter((o) => o.kind === 'ioas'), 'IOAS').to.have.length(2);
    expect(model.hwptAllocs, 'HWPT allocations').to.have.length(2);
    expect(new Set(model.hwptAllocs.map((h) => h.ptId)).size, 'distinct IOAS parents').to.equal(2);
    expect(new Set(model.attaches.map((a) => a.targetId)).size, 'distinct attach targets').to.equal(2);
  });

  it('fsts=on, device behind a conventional PCI bridge: refused with the bridge message (needs nesting; else NEST_PARENT is refused first)', async function () {
    const dev = lab.host.device(this, 'no-pasid');
    const spec: L2Spec = {
      config: loadConfig('intel-iommu-scalable-fsts'),
      extraDevices: [
        { driver: 'pcie-pci-bridge', id: 'br0', bus: 'pcie.0' },
        vfioPciDevice({ bdf: dev.bdf, id: 'hostdev0' }, 'br0'),
      ],
    };
    const { error: e, model } = await failedLaunch(lab, spec);
    expect(model).to.have.freedEverything();
    if (!lab.host.prerequisites.nesting.ok) {
      // Realize allocates the HWPT before the vIOMMU checks the topology, so a
      // host without nesting refuses NEST_PARENT before the bridge check runs.
      expect(e.stderr).to.include('Failed to allocate hwpt: Operation not supported');
      expect(model).to.have.requestedHwpt({ flags: ['NEST_PARENT'] });
      skipBecause(this, `${lab.host.prerequisites.nesting.reason}: NEST_PARENT is refused before QEMU checks for the PCI bridge (that refusal and the frees were asserted)`);
    }
    expect(e.stderr).to.match(/Host device downstream to a PCI bridge is unsupported when (fsts|x-flts|flts)=on/);
  });
});
