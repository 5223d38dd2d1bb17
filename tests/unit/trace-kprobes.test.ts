import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LINUX_7_2_X86_64, parseKprobeTrace, probeDefinitions } from '../../harness/trace/kprobes.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { TraceFormats } from '../../harness/trace/formats.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';
import { defaultTraceEventsPath } from '../../harness/trace/formats.js';
import { existsSync } from 'node:fs';
import { skipBecause } from '../../harness/report/skip.js';

const fixture = (name: string) => readFileSync(join(repoRoot, 'tests', 'fixtures', 'kprobes', name), 'utf8');

describe('kernel answers from tracefs kprobes', () => {
  it('defines entry and return probes, vendor allocators only when the symbol exists', () => {
    const defs = probeDefinitions('g', LINUX_7_2_X86_64, (s) => s === 'intel_iommu_domain_alloc_paging_flags');
    expect(defs[0]).to.equal('p:g/hwpt_alloc iommufd_hwpt_alloc flags=+4(+24(%di)):x32 dev_id=+8(+24(%di)):u32 pt_id=+12(+24(%di)):u32 data_type=+24(+24(%di)):u32');
    expect(defs).to.include('r:g/hwpt_alloc_ret iommufd_hwpt_alloc ret=$retval:s32');
    expect(defs.join('\n')).to.include('intel_iommu_domain_alloc_paging_flags').and.not.include('arm_smmu');
  });

  it('pairs entry, vendor allocator and return per task (real L1 capture)', () => {
    const recs = parseKprobeTrace(fixture('l1-vtd-flags-0x0-then-0x1.trace'));
    expect(recs.map((r) => r.event)).to.deep.equal(['hwpt_alloc', 'hwpt_alloc']);
    expect(recs[0]!.fields).to.include({ flags: 0, dev_id: 1, pt_id: 2, data_type: 0, ret: 0, vendor: 'vtd_alloc', vendor_flags: 0, vendor_ret: 0, pid: 122 });
    expect(recs[1]!.fields).to.include({ flags: 1, ret: -95, vendor_ret: -95, vendor_flags: 1, pid: 150 });
    expect(recs[1]!.raw.split('\n')).to.have.length(4);
  });

  it('keeps a probe line it cannot parse', () => {
    const recs = parseKprobeTrace(' garbage here\n');
    expect(recs).to.have.length(1);
    expect(recs[0]!.event).to.equal('unparsed');
  });

  it('joins the kernel answers to QEMU requests', async function () {
    const formatsPath = defaultTraceEventsPath();
    if (!existsSync(formatsPath)) skipBecause(this, `no trace-events-all at ${formatsPath} (reference QEMU not installed)`);
    const formats = await TraceFormats.load(formatsPath);
    // QEMU's own lines from the same L1 run (the fsts=on launch).
    const qemu = [
      'iommufd_backend_alloc_ioas  iommufd=13 ioas=2',
      'iommufd_backend_alloc_hwpt  iommufd=13 dev_id=1 pt_id=2 flags=0x1 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=0 (-1)',
      'iommufd_backend_free_id  iommufd=13 id=2 (0)',
    ].join('\n');
    const model = IommufdModel.fromParse(parseTrace(qemu, formats));
    for (const k of parseKprobeTrace(fixture('l1-vtd-flags-0x0-then-0x1.trace'))) model.addKernel(k);
    const join = model.joinKernel();
    expect(join.pairs).to.have.length(1);
    expect(join.pairs[0]!.kernel.fields.ret).to.equal(-95);
    expect(join.answersWithoutRequest.map((k) => k.fields.flags)).to.deep.equal([0]);
  });
});
