import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';
// Two behaviours of QEMU's vfio/iommufd code no capture here shows yet, modelled from the source
// (hw/vfio/iommufd.c iommufd_cdev_attach, hw/vfio/pci.c vfio_pci_realize) and tested on traces
// built from real 11.1.3 line formats (tests/fixtures/trace/l1/*.log: same fds, ids, names).
import * as chai from 'chai';
import { expect } from 'chai';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { expectHwpt, expectRealizeFailureAfterAlloc, sharesAddressSpace } from '../../harness/trace/oracle.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { failure, fixtureModel, formats1113, textModel } from './trace-fixtures.js';

chai.use(iommufdAssertions);

const T = (s: string) => s.trim().split('\n').map((l) => l.trim()).join('\n') + '\n';

/** The first device, as in l1/no-viommu-two-devices-shared-hwpt.log, with the flags fsts=on asks. */
const firstDevice = (flags: string) => `
  iommufd_cdev_getfd  /dev/vfio/devices/vfio0 (fd=15)
  iommufd_backend_connect fd=14 owned=1 users=1
  iommufd_cdev_connect_and_bind  [iommufd=14] Successfully bound device 0000:01:00.0 (fd=15): output devid=1
  iommufd_backend_alloc_ioas  iommufd=14 ioas=2
  iommufd_cdev_alloc_ioas  [iommufd=14] new IOMMUFD container with ioasid=2
  iommufd_backend_alloc_hwpt  iommufd=14 dev_id=1 pt_id=2 flags=${flags} hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=3 (0)
  iommufd_cdev_pasid_attach_ioas_hwpt  [iommufd=14] Successfully attached device 0000:01:00.0 (15) pasid 0 to id=3
  iommufd_backend_map_dma  iommufd=14 ioas=2 iova=0x0 size=0x10000000 addr=0x7f3553e00000 readonly=0 (0)
  iommufd_cdev_device_info  0000:01:00.0 (15) num_irqs=5 num_regions=9 flags=3
  iommufd_cdev_getfd  /dev/vfio/devices/vfio1 (fd=20)
  iommufd_backend_connect fd=14 owned=1 users=2
  iommufd_cdev_connect_and_bind  [iommufd=14] Successfully bound device 0000:02:00.0 (fd=20): output devid=4`;

// fsts=on: both devices in the system address space, one container. The second device's IOMMU
// lacks nesting: attaching HWPT 3 fails with EINVAL (untraced), its own 0x1 in IOAS 2 is refused,
// QEMU retries in a new IOAS 5 with the same flags, is refused again, frees IOAS 5.
const refusedTwice = T(`${firstDevice('0x1')}
  iommufd_backend_alloc_hwpt  iommufd=14 dev_id=4 pt_id=2 flags=0x1 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=0 (-1)
  iommufd_cdev_fail_attach_existing_container  Failed to allocate hwpt: Operation not supported
  iommufd_backend_alloc_ioas  iommufd=14 ioas=5
  iommufd_cdev_alloc_ioas  [iommufd=14] new IOMMUFD container with ioasid=5
  iommufd_backend_alloc_hwpt  iommufd=14 dev_id=4 pt_id=5 flags=0x1 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=0 (-1)
  iommufd_backend_free_id  iommufd=14 id=5 (0)
  iommufd_backend_disconnect fd=14 users=1`);
const stderr = 'qemu-system-x86_64: -device vfio-pci,host=0000:02:00.0,iommufd=iommufd0,id=hostdev1: vfio 0000:02:00.0: Failed to set up container: Failed to allocate hwpt: Operation not supported\n';

// No vIOMMU: the second device's attach to HWPT 3 is refused with another errno than EINVAL.
const attachRefused = T(`${firstDevice('0x0')}
  iommufd_cdev_fail_attach_existing_container  [iommufd=14] error attach 0000:02:00.0 (20) pasid 0 to id=3: Device or resource busy
  iommufd_backend_alloc_ioas  iommufd=14 ioas=5
  iommufd_cdev_alloc_ioas  [iommufd=14] new IOMMUFD container with ioasid=5
  iommufd_backend_alloc_hwpt  iommufd=14 dev_id=4 pt_id=5 flags=0x0 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=6 (0)
  iommufd_cdev_pasid_attach_ioas_hwpt  [iommufd=14] Successfully attached device 0000:02:00.0 (20) pasid 0 to id=6`);

const host = { dirtyTracking: false, maxPasidLog2: 0 };
const fsts = { kind: 'intel-iommu', fsts: true, pasidBits: 0 } as const;

describe('a refusal in an existing container: QEMU retries in a new IOAS with the same flags', function () {
  it('which configs share one container between devices', function () {
    expect([{ kind: 'none' } as const, { kind: 'intel-iommu', fsts: false } as const, fsts, { kind: 'arm-smmuv3', accel: true } as const].map(sharesAddressSpace)).to.deep.equal([
      true, false, true, true,
    ]);
    expect(expectHwpt({ kind: 'intel-iommu', fsts: false }, host, { secondDevice: true })).to.include({ mayReuse: false, maxRequests: 1 });
    const second = expectHwpt(fsts, host, { secondDevice: true });
    expect(second).to.include({ mayReuse: true, maxRequests: 2, allocates: true });
    expect(second.explanation).to.include('iommufd_cdev_fail_attach_existing_container');
  });

  it('alloc refused twice: two requests with the same flags, the errnos from the trace message and from stderr, each named', function () {
    const m = textModel(refusedTwice);
    m.addQemuMessages(stderr);
    const dev2 = m.hwptAllocs.filter((h) => h.devId === 4);
    expect(dev2.map((h) => [h.ptId, h.flags, h.ret, h.errno, h.errnoSource])).to.deep.equal([
      [2, 0x1, -1, 'EOPNOTSUPP', 'qemu-trace-message'],
      [5, 0x1, -1, 'EOPNOTSUPP', 'qemu-message'],
    ]);
    expect(m.retries).to.have.length(1);
    expect(m.retries[0]).to.include({ message: 'Failed to allocate hwpt: Operation not supported', errno: 'EOPNOTSUPP' });
    expect(m.retries[0]!.failedAlloc).to.equal(dev2[0]);
    expect(m.deviceStory('0000:02:00.0')?.objects.map((o) => [o.kind, o.id, Boolean(o.freed)])).to.deep.equal([['ioas', 5, true]]);
    expect(m).to.have.requestedPerOracle(expectHwpt(fsts, host, { secondDevice: true }), { devId: 4 });
    expect(m).to.have.requestedPerOracle(expectHwpt(fsts, host), { devId: 1 });
    // Without the second-device allowance the retry is one request too many, and the message says so.
    const msg = failure(() => expect(m).to.have.requestedPerOracle(expectHwpt(fsts, host), { devId: 4 }));
    expect(msg.split('\n')[0]).to.equal('dev_id 4: requested 0x1 (NEST_PARENT), then 0x1 (NEST_PARENT), expected 0x1 (NEST_PARENT): fsts wants a nesting parent');
    expect(msg).to.include('(2 requests, at most 1 allowed)');
  });

  it('the same when QEMU\'s stderr is given before the trace is read (a follower feeding records)', function () {
    const m = new IommufdModel();
    m.addQemuMessages(stderr);
    for (const r of parseTrace(refusedTwice, formats1113).records) m.add(r);
    expect(m.hwptAllocs.filter((h) => h.devId === 4).map((h) => h.errnoSource)).to.deep.equal(['qemu-trace-message', 'qemu-message']);
  });

  it('a second request without the retry line, or on the same IOAS, is not the retry', function () {
    const second = expectHwpt(fsts, host, { secondDevice: true });
    const noRetry = textModel(refusedTwice.replace(/^iommufd_cdev_fail_attach_existing_container.*\n/m, ''));
    expect(failure(() => expect(noRetry).to.have.requestedPerOracle(second, { devId: 4 }))).to.include('a second request without iommufd_cdev_fail_attach_existing_container before it');
    const sameIoas = textModel(refusedTwice.replace('dev_id=4 pt_id=5', 'dev_id=4 pt_id=2'));
    expect(failure(() => expect(sameIoas).to.have.requestedPerOracle(second, { devId: 4 }))).to.include('the retry asked on the same IOAS (pt_id=2), not a new one');
    const otherFlags = textModel(refusedTwice.replace('dev_id=4 pt_id=5 flags=0x1', 'dev_id=4 pt_id=5 flags=0x0'));
    expect(failure(() => expect(otherFlags).to.have.requestedPerOracle(second, { devId: 4 }))).to.include('1 request(s) unlike the oracle');
  });

  it('attach refused with EBUSY: the refusal is known only from the retry line; one request in the new IOAS', function () {
    const m = textModel(attachRefused);
    expect(m.retries[0]).to.deep.include({ errno: 'EBUSY', refusedAttach: { name: '0000:02:00.0', targetId: 3 } });
    expect(m.hwptAllocs.filter((h) => h.devId === 4).map((h) => [h.ptId, h.ok])).to.deep.equal([[5, true]]);
    expect(m).to.have.attached({ devId: 4, targetId: 6, targetRole: 'parent' });
    expect(m).to.have.requestedPerOracle(expectHwpt({ kind: 'none' }, host, { secondDevice: true }), { devId: 4 });
  });

  it('real captures of two devices: without a vIOMMU the second reuses HWPT 3; under intel-iommu fsts=off each has its own IOAS', function () {
    const shared = fixtureModel('l1/no-viommu-two-devices-shared-hwpt.log');
    expect(shared).to.have.requestedPerOracle(expectHwpt({ kind: 'none' }, host), { devId: 1 });
    expect(shared).to.have.requestedPerOracle(expectHwpt({ kind: 'none' }, host, { secondDevice: true }), { devId: 4 });
    expect(shared).to.have.attached({ devId: 4, targetId: 3, targetRole: 'parent' });
    const own = fixtureModel('l1/vtd-two-devices-own-ioas-each.log');
    const vtdOff = { kind: 'intel-iommu', fsts: false } as const;
    // Per-device VT-d address spaces: the second device is a first device of its own container.
    expect(expectHwpt(vtdOff, host, { secondDevice: true })).to.include({ mayReuse: false, maxRequests: 1 });
    expect(own).to.have.requestedPerOracle(expectHwpt(vtdOff, host, { secondDevice: true }), { devId: 4 });
    expect(own.deviceStory(4)?.objects.map((o) => `${o.kind} ${o.id}`)).to.deep.equal(['ioas 5', 'hwpt 6']);
    expect(own.retries).to.deep.equal([]);
  });

  it('reuse: a second device attaching to the first one\'s HWPT passes the second-device expectation (real capture)', function () {
    const m = textModel(T(firstDevice('0x0') + '\niommufd_cdev_pasid_attach_ioas_hwpt  [iommufd=14] Successfully attached device 0000:02:00.0 (20) pasid 0 to id=3'));
    expect(m).to.have.requestedPerOracle(expectHwpt({ kind: 'none' }, host, { secondDevice: true }), { devId: 4 });
    expect(failure(() => expect(m).to.have.requestedPerOracle(expectHwpt({ kind: 'none' }, host), { devId: 4 }))).to.include('(no request)');
  });
});

// Hot-plug under fsts=on behind a conventional PCI bridge: the alloc and attach succeed, then
// set_iommu_device's bridge check fails; device_add's failure finalizes the device: detach, frees.
const bridgeHotplug = T(`
  iommufd_cdev_getfd  /dev/vfio/devices/vfio0 (fd=15)
  iommufd_backend_connect fd=14 owned=1 users=1
  iommufd_cdev_connect_and_bind  [iommufd=14] Successfully bound device 0000:01:00.0 (fd=15): output devid=1
  iommufd_backend_alloc_ioas  iommufd=14 ioas=2
  iommufd_cdev_alloc_ioas  [iommufd=14] new IOMMUFD container with ioasid=2
  iommufd_backend_alloc_hwpt  iommufd=14 dev_id=1 pt_id=2 flags=0x1 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=3 (0)
  iommufd_cdev_pasid_attach_ioas_hwpt  [iommufd=14] Successfully attached device 0000:01:00.0 (15) pasid 0 to id=3
  iommufd_backend_map_dma  iommufd=14 ioas=2 iova=0x0 size=0x4000000 addr=0x7f52c7e00000 readonly=0 (0)
  iommufd_cdev_device_info  0000:01:00.0 (15) num_irqs=5 num_regions=9 flags=3
  iommufd_cdev_pasid_detach_ioas_hwpt  [iommufd=14] Successfully detached 0000:01:00.0 pasid 0
  iommufd_backend_free_id  iommufd=14 id=3 (0)
  iommufd_backend_unmap_dma  iommufd=14 ioas=2 iova=0x0 size=0x4000000 (0)
  iommufd_backend_free_id  iommufd=14 id=2 (0)
  iommufd_backend_disconnect fd=-1 users=0`);
const qmpError = 'vfio 0000:01:00.0: Failed to set vIOMMU: Host device downstream to a PCI bridge is unsupported when fsts=on';

describe('a realize failing after the alloc', function () {
  const hot = expectRealizeFailureAfterAlloc({ hotplug: true });
  const cold = expectRealizeFailureAfterAlloc({ hotplug: false });

  it('hot-plug: allocated, attached, then detach and frees of the HWPT and the IOAS; the QMP error names the check', function () {
    const m = textModel(bridgeHotplug);
    expect(m.addQemuMessages(qmpError, 'qmp')[0]).to.include({ realizeCheck: 'bridge' });
    expect(m).to.have.realizeFailedAfterAlloc(hot);
    expect(m).to.have.freedEverything();
    const story = m.deviceStory(1)!;
    expect(story.objects.map((o) => [o.kind, o.id, o.freed?.line])).to.deep.equal([['ioas', 2, 13], ['hwpt', 3, 11]]);
    expect(hot.explanation).to.include('detaches pasid 0, frees its HWPT, frees its IOAS');
  });

  it('without the frees a hot-plug fails, listing what is left; a cold-plug with them fails too', function () {
    const leaky = textModel(bridgeHotplug.replace(/^iommufd_backend_free_id.*\n/gm, ''));
    const msg = failure(() => expect(leaky).to.have.realizeFailedAfterAlloc(hot));
    expect(msg).to.include('still live: ioas 2 (L4), hwpt 3 (L6)');
    expect(failure(() => expect(leaky).to.have.freedEverything())).to.include('2 still live');
    // A cold-plug expects no frees: with them it fails, naming what it found.
    expect(failure(() => expect(textModel(bridgeHotplug)).to.have.realizeFailedAfterAlloc(cold))).to.include('a detach at L').and.include('QEMU exits 1');
  });

  it('cold-plug (real 11.1.3 capture, no caching-mode): allocated and attached, then QEMU exits 1 with nothing detached or freed in its trace', function () {
    const m = fixtureModel('l1/vtd-no-caching-mode-cold-plug-refused.log');
    m.addQemuMessages(readFileSync(join(repoRoot, 'tests', 'fixtures', 'trace', 'l1', 'vtd-no-caching-mode-cold-plug-refused.stderr'), 'utf8'));
    expect(m.qemuMessages.map((q) => q.realizeCheck)).to.include('caching-mode');
    expect(m).to.have.realizeFailedAfterAlloc(cold);
    expect(m.liveObjects().map((o) => `${o.kind} ${o.id}`)).to.deep.equal(['ioas 2', 'hwpt 3']);
  });

  it('a failure at the alloc itself is not one after it; messages without a known check are named', function () {
    const atAlloc = textModel(bridgeHotplug.replace('out_hwpt=3 (0)', 'out_hwpt=0 (-1)'));
    expect(failure(() => expect(atAlloc).to.have.realizeFailedAfterAlloc(hot))).to.include('no successful HWPT allocation');
    const m = textModel(bridgeHotplug);
    m.addQemuMessages('vfio 0000:01:00.0: something else went wrong', 'qmp');
    expect(failure(() => expect(m).to.have.realizeFailedAfterAlloc(hot))).to.include("QEMU's messages name no realize check that runs after the alloc");
  });

  for (const [check, text] of [
    ['caching-mode', 'Failed to set vIOMMU: Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU.'],
    ['aw-bits', 'Failed to set vIOMMU: aw-bits 48 > host aw-bits 39'],
    ['pasid-bits', 'Failed to set vIOMMU: PASID bits size 20 > host IOMMU PASID bits size 16'],
    ['bridge', 'Failed to set vIOMMU: Host device downstream to a PCI bridge is unsupported when x-flts=on'],
  ] as const) {
    it(`names the ${check} check from QEMU's message`, function () {
      const m = textModel(bridgeHotplug);
      expect(m.addQemuMessages(`qemu-system-x86_64: -device vfio-pci,host=0000:01:00.0: vfio 0000:01:00.0: ${text}`)[0]!.realizeCheck).to.equal(check);
      expect(m).to.have.realizeFailedAfterAlloc(hot);
    });
  }
});
