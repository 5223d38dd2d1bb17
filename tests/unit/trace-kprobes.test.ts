import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compareSelfCheck, parseKprobeTrace, probeDefinitions } from '../../harness/trace/kprobes.js';
import { qemuKernelRecords } from '../../harness/lab/fixture.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { TraceFormats } from '../../harness/trace/formats.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';
import { defaultTraceEventsPath } from '../../harness/trace/formats.js';
import { existsSync } from 'node:fs';
import { skipBecause } from '../../harness/report/skip.js';

const fixture = (name: string) => readFileSync(join(repoRoot, 'tests', 'fixtures', 'kprobes', name), 'utf8');

describe('kernel answers from tracefs kprobes', () => {
  it('reads the ioctl’s own uAPI struct through $argN and user memory: no register names, no kernel struct offsets', () => {
    const defs = probeDefinitions('g', (s) => s !== 'arm_smmu_domain_alloc_paging_flags');
    const lines = defs.map((d) => d.line);
    expect(lines[0]).to.equal(
      'p:g/hwpt_alloc iommufd_fops_ioctl cmd=$arg2:x32 flags=+u4($arg3):x32 dev_id=+u8($arg3):u32 pt_id=+u12($arg3):u32 data_type=+u24($arg3):u32 data_len=+u28($arg3):u32',
    );
    expect(defs[0]!.filter).to.equal('cmd == 0x3b89');
    expect(lines).to.include('r:g/hwpt_alloc_ret iommufd_hwpt_alloc ret=$retval:s32');
    expect(lines).to.include('p:g/viommu_alloc iommufd_fops_ioctl cmd=$arg2:x32 type=+u8($arg3):u32 dev_id=+u12($arg3):u32 hwpt_id=+u16($arg3):u32');
    expect(lines).to.include('p:g/vtd_alloc intel_iommu_domain_alloc_paging_flags flags=$arg2:x32');
    // Nothing arch-specific: no %di/%si (x86_64) or %x0 (arm64) registers.
    expect(lines.join('\n')).to.not.match(/%[a-z]/).and.not.include('arm_smmu');
  });

  it('leaves out a command whose handler this kernel lacks', () => {
    const defs = probeDefinitions('g', (s) => s !== 'iommufd_vdevice_alloc_ioctl');
    expect(defs.map((d) => d.line).join('\n')).to.not.include('vdevice_alloc');
  });

  it('self-check: the requests a known task fired must come back exactly, in order', () => {
    const trace = [
      ' iommufd-probe-301     [000] .....   10.000001: hwpt_alloc: (iommufd_fops_ioctl+0x0/0x190) cmd=0x3b89 flags=0x0 dev_id=1 pt_id=2 data_type=0 data_len=0',
      ' iommufd-probe-301     [000] .....   10.000002: hwpt_alloc_ret: (iommufd_fops_ioctl+0xf8/0x190 <- iommufd_hwpt_alloc) ret=0',
      ' iommufd-probe-301     [000] .....   10.000003: hwpt_alloc: (iommufd_fops_ioctl+0x0/0x190) cmd=0x3b89 flags=0x4 dev_id=1 pt_id=2 data_type=0 data_len=0',
      ' iommufd-probe-301     [000] .....   10.000004: hwpt_alloc_ret: (iommufd_fops_ioctl+0xf8/0x190 <- iommufd_hwpt_alloc) ret=-2',
    ].join('\n');
    const recs = parseKprobeTrace(trace);
    expect(recs[0]!.fields).to.not.have.property('cmd');
    const reqs = [{ flags: 0, devId: 1, ptId: 2, ret: 0 }, { flags: 4, devId: 1, ptId: 2, ret: -2 }];
    expect(compareSelfCheck(reqs, recs, 'iommufd-probe').ok).to.equal(true);
    const wrong = compareSelfCheck([reqs[0]!, { ...reqs[1]!, ptId: 3 }], recs, 'iommufd-probe');
    expect(wrong.ok).to.equal(false);
    expect(wrong.detail).to.include('asked IOMMU_HWPT_ALLOC flags=0x0 dev_id=1 pt_id=2 ret=0; flags=0x4 dev_id=1 pt_id=3 ret=-2')
      .and.include('recorded flags=0x0 dev_id=1 pt_id=2 ret=0; flags=0x4 dev_id=1 pt_id=2 ret=-2');
    expect(compareSelfCheck(reqs, [], 'iommufd-probe').detail).to.include('recorded no request');
  });

  it('QEMU’s request is joined to QEMU’s kernel answer, never to the harness’s own direct question with the same flags', async function () {
    const formatsPath = defaultTraceEventsPath();
    if (!existsSync(formatsPath)) skipBecause(this, `no trace-events-all at ${formatsPath} (reference QEMU not installed)`);
    const formats = await TraceFormats.load(formatsPath);
    // The direct question (iommufd-probe) is answered 0 by a fake kernel; QEMU's, -95: a join that
    // took the direct one would compare the direct answer with itself.
    const kernel = parseKprobeTrace([
      ' iommufd-probe-90      [000] .....   9.1: hwpt_alloc: (iommufd_fops_ioctl+0x0/0x190) cmd=0x3b89 flags=0x1 dev_id=1 pt_id=2 data_type=0 data_len=0',
      ' iommufd-probe-90      [000] .....   9.2: hwpt_alloc_ret: (iommufd_fops_ioctl+0xf8/0x190 <- iommufd_hwpt_alloc) ret=0',
      ' ld-linux-x86-64-95    [001] .....   9.5: hwpt_alloc: (iommufd_fops_ioctl+0x0/0x190) cmd=0x3b89 flags=0x1 dev_id=1 pt_id=2 data_type=0 data_len=0',
      ' ld-linux-x86-64-95    [001] .....   9.6: hwpt_alloc_ret: (iommufd_fops_ioctl+0xf8/0x190 <- iommufd_hwpt_alloc) ret=-95',
    ].join('\n'));
    const qemu = 'iommufd_backend_alloc_ioas  iommufd=13 ioas=2\niommufd_backend_alloc_hwpt  iommufd=13 dev_id=1 pt_id=2 flags=0x1 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=0 (-1)\n';
    const model = IommufdModel.fromParse(parseTrace(qemu, formats));
    for (const k of qemuKernelRecords(kernel)) model.addKernel(k);
    model.joinKernel();
    expect(model.hwptAllocs[0]!.kernel?.fields).to.include({ task: 'ld-linux-x86-64', ret: -95 });
  });

  it('pairs a vIOMMU allocation with its return, not with a vendor allocator', () => {
    const recs = parseKprobeTrace([
      ' qemu-system-aar-410     [001] .....   5.1: viommu_alloc: (iommufd_fops_ioctl+0x0/0x1a0) cmd=0x3b90 type=1 dev_id=1 hwpt_id=3',
      ' qemu-system-aar-410     [001] .....   5.2: viommu_alloc_ret: (iommufd_fops_ioctl+0x100/0x1a0 <- iommufd_viommu_alloc_ioctl) ret=-95',
    ].join('\n'));
    expect(recs).to.have.length(1);
    expect(recs[0]!.fields).to.include({ type: 1, dev_id: 1, hwpt_id: 3, ret: -95 });
    expect(recs[0]!.fields).to.not.have.property('vendor');
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
