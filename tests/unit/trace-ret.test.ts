// What a trace `ret` means, per event (flags.ts RET_ENCODING, read from backends/iommufd.c and
// hw/i386/intel_iommu_accel.c), on real captured lines where a capture has them.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodedFields, errnoFromText, retOutcome } from '../../harness/trace/flags.js';
import { parseKprobeTrace } from '../../harness/trace/kprobes.js';
import { repoRoot } from '../../harness/util/paths.js';
import { textModel, traceFixture } from './trace-fixtures.js';

const refused = traceFixture('l1/vtd-fsts-pasid20-pasid-device-0x9-refused.log');
const refusedLine = refused.split('\n').find((l) => l.includes('iommufd_backend_alloc_hwpt'))!;
const kprobes = readFileSync(join(repoRoot, 'tests', 'fixtures', 'kprobes', 'l1-pasid-scenarios.trace'), 'utf8').split('\n').slice(0, 4).join('\n');

describe('trace ret: what the number means', function () {
  it('alloc_hwpt (-1) on a real line: a failure without an errno, never EPERM', function () {
    expect(refusedLine).to.match(/flags=0x9 .* \(-1\)$/);
    const m = textModel(refused);
    const h = m.hwptAllocs[0]!;
    expect(h).to.include({ ret: -1, ok: false, outcome: 'failed (ioctl returned -1; the errno is not in the trace)' });
    expect(h.errno).to.equal(undefined);
    expect(m.failures().map((f) => [f.what, f.errno])).to.deep.equal([['iommufd_backend_alloc_hwpt', undefined]]);
    expect(decodedFields('iommufd_backend_alloc_hwpt', { flags: 9, hwpt_type: 0, ret: -1 }).ret).to.equal('failed (ioctl returned -1; the errno is not in the trace)');
  });

  it('the errno from the kernel (real kprobe lines), then QEMU\'s message: the kernel\'s wins, both are kept, each named', function () {
    const m = textModel(refused);
    for (const k of parseKprobeTrace(kprobes)) m.addKernel(k);
    m.joinKernel();
    const h = m.hwptAllocs[0]!;
    expect(h).to.include({ errno: 'EOPNOTSUPP', errnoSource: 'kernel' });
    expect(h.outcome).to.match(/^EOPNOTSUPP \(from the kernel's answer: tracefs:hwpt_alloc line 1: ret=-95\)$/);
    m.addQemuMessages('qemu-system-x86_64: -device vfio-pci,host=0000:05:00.0,id=d0,bus=rp0,iommufd=iommufd0: vfio 0000:05:00.0: Failed to allocate hwpt: Operation not supported\n');
    expect(h.errnoEvidence.map((e) => e.source)).to.deep.equal(['kernel', 'qemu-message']);
    expect(m.anomalies).to.deep.equal([]);
    // Joining again does not pile up the same evidence.
    m.joinKernel();
    expect(h.errnoEvidence).to.have.length(2);
  });

  it('sources that disagree are an anomaly naming both', function () {
    const m = textModel(refused);
    m.addQemuMessages('vfio 0000:05:00.0: Failed to allocate hwpt: Invalid argument');
    for (const k of parseKprobeTrace(kprobes)) m.addKernel(k);
    m.joinKernel();
    expect(m.hwptAllocs[0]).to.include({ errno: 'EOPNOTSUPP', errnoSource: 'kernel' });
    expect(m.anomalies).to.deep.equal(["line 6: the kernel's answer says EOPNOTSUPP, QEMU's message says EINVAL"]);
  });

  it('a build that traces -errno: named, with the trace as its source', function () {
    const m = textModel(refusedLine.replace('(-1)', '(-95)'));
    expect(m.hwptAllocs[0]).to.include({ errno: 'EOPNOTSUPP', errnoSource: 'trace' });
  });

  it('free_id (-1): the errno from "Failed to free id: %u %m"', function () {
    const m = textModel('iommufd_backend_free_id  iommufd=15 id=2 (-1)\n');
    m.addQemuMessages('qemu-system-x86_64: Failed to free id: 2 Device or resource busy\n');
    expect(m.failures()[0]).to.include({ what: 'iommufd_backend_free_id', errno: 'EBUSY', errnoSource: 'qemu-message' });
  });

  it('set_dirty, get_dirty_bitmap, invalidate_cache trace a positive errno (`ret ? errno : 0`)', function () {
    // invalidate_cache (0) is a real line of the arm64 boot capture; the failing ones use the same formats.
    const ok = traceFixture('arm64/l2-accel-boot.trace').split('\n').find((l) => l.includes('iommufd_backend_invalidate_cache'))!;
    const m = textModel(
      [
        ok,
        ok.replace('done_num=1', 'done_num=0').replace('(0)', '(22)'),
        'iommufd_backend_set_dirty  iommufd=20 hwpt=3 enable=1 (95)',
        'iommufd_backend_get_dirty_bitmap  iommufd=20 hwpt=3 iova=0x0 size=0x1000 flags=0x0 page_size=0x1000 (14)',
      ].join('\n') + '\n',
    );
    expect(m.invalidations.map((i) => [i.ok, i.errno])).to.deep.equal([[true, undefined], [false, 'EINVAL']]);
    expect(m.dirty[0]).to.include({ ok: false, errno: 'EOPNOTSUPP', errnoSource: 'trace', enable: true });
    expect(m.dirtyReads[0]).to.include({ ok: false, errno: 'EFAULT' });
    expect(decodedFields('iommufd_backend_set_dirty', { ret: 95 })).to.deep.equal({ ret: 'EOPNOTSUPP' });
  });

  it('vtd_device_* trace a bool: 1 = success, 0 = failure', function () {
    expect(retOutcome('vtd_device_attach_hwpt', 1)).to.deep.equal({ ok: true, text: 'OK' });
    expect(retOutcome('vtd_device_attach_hwpt', 0)).to.deep.equal({ ok: false, text: 'failed (returned false)' });
    const m = textModel('vtd_device_attach_hwpt dev_id 1 pasid 0 hwpt_id 4, ret: 0\nvtd_device_detach_hwpt dev_id 1 pasid 0 ret: 1\n');
    expect(m.vtd.map((v) => [v.op, v.ok])).to.deep.equal([['attach', false], ['detach', true]]);
    expect(m.failures().map((f) => f.outcome)).to.deep.equal(['failed (returned false)']);
    expect(decodedFields('vtd_device_attach_hwpt', { ret: 0 })).to.deep.equal({ ret: 'failed (returned false)' });
    expect(decodedFields('vtd_device_attach_hwpt', { ret: 1 })).to.deep.equal({});
  });

  it('unmap_dma_non_exist (-1) on a real line: ENOENT, which QEMU counts as success', function () {
    const line = traceFixture('arm64/l2-accel-boot.trace').split('\n').find((l) => l.includes('unmap_dma_non_exist'))!;
    expect(line).to.match(/\(-1\)$/);
    expect(retOutcome('iommufd_backend_unmap_dma_non_exist', -1)).to.include({ ok: true, errno: 'ENOENT' });
    expect(decodedFields('iommufd_backend_unmap_dma_non_exist', { ret: -1 })).to.deep.equal({ ret: 'ENOENT: no such mapping, which QEMU counts as success' });
  });

  it('strerror texts back to names; an event the table does not know claims nothing', function () {
    expect(['Operation not supported', 'Bad address', 'Invalid argument', 'No such file or directory'].map(errnoFromText)).to.deep.equal([
      'EOPNOTSUPP', 'EFAULT', 'EINVAL', 'ENOENT',
    ]);
    expect(errnoFromText('Something new')).to.equal(undefined);
    expect(retOutcome('iommufd_change_process', 1)).to.equal(undefined);
    expect(decodedFields('iommufd_change_process', { ret: -1 })).to.deep.equal({});
  });
});
