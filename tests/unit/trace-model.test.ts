// iommufd lines here are written from the facts sheet (formats of section 5, sequences of
// sections 3 and 9), not captured: see tests/fixtures/trace/README.md. The real captures
// are read by trace-l1-captures, trace-smmuv3, trace-ret and trace-retry-realize tests.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TraceFormats } from '../../harness/trace/formats.js';
import { excerpt, IommufdModel, type KernelRecord } from '../../harness/trace/model.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';

const FIX = join(repoRoot, 'tests', 'fixtures', 'trace');
const fixture = (name: string): string => readFileSync(join(FIX, name), 'utf8');
const formats = TraceFormats.fromText(fixture('trace-events-11.1.3-excerpt'));
const model = (name: string, f = formats): IommufdModel => IommufdModel.fromParse(parseTrace(fixture(name), f));

describe('trace model: iommufd objects from trace records', function () {
  it('hot-plug then unplug without vIOMMU: IOAS, HWPT 0x0, attach pasid 0, detach, frees', function () {
    const m = model('facts-hotplug-no-viommu.log');
    expect(m.binds).to.have.length(1);
    expect(m.binds[0]).to.include({ name: '0000:00:03.0', devId: 1, fd: 13, iommufd: 12 });
    expect(m.objects.map((o) => [o.kind, o.id])).to.deep.equal([['ioas', 2], ['hwpt', 3]]);
    expect(m.hwptAllocs).to.have.length(1);
    expect(m.hwptAllocs[0]).to.include({ devId: 1, ptId: 2, ptKind: 'ioas', role: 'parent', flags: 0, id: 3, ok: true, outcome: 'OK' });
    expect(m.hwptAllocs[0]!.errno).to.equal(undefined);
    expect(m.attaches[0]).to.include({ pasid: 0, targetId: 3, targetKind: 'hwpt', devId: 1 });
    expect(m.detaches[0]).to.include({ pasid: 0, devId: 1 });
    expect(m.liveObjects()).to.deep.equal([]);
    expect(m.objects.every((o) => o.freed !== undefined)).to.equal(true);
    expect(m.maps).to.deep.include({ map: 2, unmap: 2, mapFailed: 0 });
    expect(m.maps.byIoas.get(2)).to.equal(2);
    expect(m.anomalies).to.deep.equal([]);
  });

  it('fsts=on refused: the trace says -1 (the raw ioctl result), QEMU\'s message in the same file says EOPNOTSUPP', function () {
    const m = model('facts-fsts-eopnotsupp.log');
    expect(m.failedHwptAllocs().map((h) => [h.flags, h.flagNames, h.ret, h.errno, h.errnoSource])).to.deep.equal([
      [1, ['NEST_PARENT'], -1, 'EOPNOTSUPP', 'qemu-message'],
    ]);
    expect(m.objects.map((o) => o.kind)).to.deep.equal(['ioas']);
    expect(m.failures().map((f) => [f.what, f.errno, f.errnoSource])).to.deep.equal([['iommufd_backend_alloc_hwpt', 'EOPNOTSUPP', 'qemu-message']]);
    expect(m.qemuMessages.map((q) => [q.event, q.errno])).to.deep.equal([['iommufd_backend_alloc_hwpt', 'EOPNOTSUPP']]);
    expect(m.liveObjects()).to.deep.equal([]);
    expect(m.hwptAllocs[0]!.record.time).to.equal('2026-11-26T00:48:05.019408Z');
  });

  it('a second device reusing the HWPT: one allocation, two attaches to the same id', function () {
    const m = model('facts-two-devices-reuse.log');
    const per = m.allocationsPerDevice();
    expect([...per.keys()]).to.deep.equal([1]);
    expect(m.attaches.map((a) => [a.devId, a.targetId, a.pasid])).to.deep.equal([[1, 3, 0], [4, 3, 0]]);
    expect(m.liveObjects().map((o) => `${o.kind} ${o.id}`)).to.deep.equal(['ioas 2', 'hwpt 3']);
  });

  it('VT-d nested: parent 0xb on the IOAS, stage-1 0x8 type VTD_S1 on the parent, vtd ops, dirty', function () {
    const m = model('facts-vtd-nested-pasid.log');
    expect(m.hwptAllocs.map((h) => [h.ptKind, h.flagNames, h.hwptTypeName, h.len])).to.deep.equal([
      ['ioas', ['NEST_PARENT', 'DIRTY_TRACKING', 'PASID'], 'NONE', 0],
      ['hwpt', ['PASID'], 'VTD_S1', 24],
    ]);
    // vtd_device_* trace a bool: 1 = success.
    expect(m.vtd.map((v) => [v.op, v.devId, v.pasid, v.hwptId, v.ret, v.ok])).to.deep.equal([
      ['attach', 1, 0, 4, 1, true], ['detach', 1, 0, undefined, 1, true], ['reattach', 1, 0, 3, 1, true],
    ]);
    expect(m.hwptAllocs.map((h) => h.role)).to.deep.equal(['parent', 'nested']);
    expect(m.dirty).to.have.length(1);
    expect(m.dirty[0]).to.include({ hwptId: 3, enable: true, ret: 0 });
    expect(m.liveObjects().map((o) => `${o.kind} ${o.id}`)).to.deep.equal(['ioas 2', 'hwpt 3']);
  });

  it('older QEMU: attach without a PASID field', function () {
    const old = TraceFormats.fromText(fixture('trace-events-old-attach'));
    const m = model('old-attach.log', old);
    expect(m.attaches).to.have.length(1);
    expect(m.attaches[0]!.pasid).to.equal(undefined);
    expect(m.attaches[0]).to.include({ targetId: 3, devId: 1 });
    expect(m.detaches).to.have.length(1);
    expect(m.liveObjects()).to.deep.equal([]);
  });

  it('keeps garbled lines out of the model and carries them as diagnostics', function () {
    const m = model('garbled.log');
    expect(m.hwptAllocs).to.have.length(1);
    expect(m.diagnostics.map((d) => d.line)).to.deep.equal([3, 4, 8]);
    expect(m.attaches).to.deep.equal([]);
    expect(m.liveObjects().map((o) => o.kind)).to.deep.equal(['ioas']);
  });

  it('tracks reused ids across hot-plug cycles and flags a double allocation', function () {
    const text = fixture('facts-hotplug-no-viommu.log');
    const m = IommufdModel.fromParse(parseTrace(text + text + text, formats));
    expect(m.objects).to.have.length(6);
    expect(m.liveObjects()).to.deep.equal([]);
    expect(m.anomalies).to.deep.equal([]);
    const bad = IommufdModel.fromParse(parseTrace('iommufd_backend_alloc_ioas  iommufd=12 ioas=2\niommufd_backend_alloc_ioas  iommufd=12 ioas=2\niommufd_backend_free_id  iommufd=12 id=9 (0)\n', formats));
    expect(bad.anomalies).to.have.length(1);
    expect(bad.anomalies[0]).to.match(/line 2: ioas 2 allocated while ioas 2 from line 1 was never freed/);
    expect(bad.unmatchedFrees.map((r) => r.line)).to.deep.equal([3]);
  });

  it('names a missing field as an anomaly instead of throwing', function () {
    const f = TraceFormats.fromText('iommufd_backend_free_id(int iommufd, uint32_t ident, int ret) " iommufd=%d ident=%d (%d)"\n');
    const m = IommufdModel.fromParse(parseTrace('iommufd_backend_free_id  iommufd=1 ident=2 (0)\n', f));
    expect(m.anomalies).to.have.length(1);
    expect(m.anomalies[0]).to.match(/line 1: iommufd_backend_free_id has none of the fields id \(has iommufd, ident, ret\)/);
  });

  it('joins kernel answers to requests by dev_id, pt_id, flags and order', function () {
    const m = model('facts-two-devices-reuse.log');
    const k = (line: number, fields: KernelRecord['fields']): KernelRecord => ({ kind: 'kernel', event: 'hwpt_alloc', fields, line, raw: `kp ${line}`, source: 'test' });
    m.addKernel(k(1, { flags: 0x1, dev_id: 1, pt_id: 2, ret: -95 }));
    m.addKernel(k(2, { flags: 0x0, dev_id: 1, pt_id: 2, ret: 0 }));
    const j = m.joinKernel();
    expect(j.pairs).to.have.length(1);
    expect(j.pairs[0]!.kernel.line).to.equal(2);
    expect(m.hwptAllocs[0]!.kernel?.fields.ret).to.equal(0);
    expect(j.answersWithoutRequest.map((a) => a.line)).to.deep.equal([1]);
    expect(j.requestsWithoutAnswer).to.deep.equal([]);
    expect(j.viommu.pairs).to.deep.equal([]);
  });

  it('excerpt shows line numbers and elides the start of long lists', function () {
    const m = model('facts-hotplug-no-viommu.log');
    expect(excerpt(m.used.slice(0, 2))).to.equal(
      '  L2: iommufd_cdev_connect_and_bind  [iommufd=12] Successfully bound device 0000:00:03.0 (fd=13): output devid=1\n' +
        '  L3: iommufd_backend_alloc_ioas  iommufd=12 ioas=2',
    );
    const short = excerpt(m.used, 2).split('\n');
    expect(short).to.deep.equal([
      `  … ${m.used.length - 2} earlier lines`,
      '  L12: iommufd_backend_unmap_dma  iommufd=12 ioas=2 iova=0xc0000 size=0x7ff40000 (0)',
      '  L13: iommufd_backend_free_id  iommufd=12 id=2 (0)',
    ]);
    expect(excerpt([])).to.equal('  (no matching trace lines)');
  });
});
