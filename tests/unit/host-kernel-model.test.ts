import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseHwInfoJson, parseHwptAllocJson, type HwInfo } from '../../harness/host/hwinfo.js';
import { nestingParent, predictHwptAlloc, smmuFeatures, vtdFeatures } from '../../harness/host/kernel-model.js';
import { repoRoot } from '../../harness/util/paths.js';

const lines = (name: string) => readFileSync(join(repoRoot, 'tests', 'fixtures', 'host', name), 'utf8').trim().split('\n');
const hw = (json: string): HwInfo => {
  const r = parseHwInfoJson(json);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
};
const answers = (h: HwInfo, flags: number[]) =>
  Object.fromEntries(flags.map((f) => {
    const a = predictHwptAlloc(h, f);
    return [`0x${f.toString(16)}`, a ? (a.ok ? 'ok' : a.errno) : 'unknown'];
  }));

const b = (n: number) => 1n << BigInt(n);
/** VT-d ecap from the spec's bit positions (VT-d 4.1, §11.4.3): SMTS 43, FLTS 47, SLTS 46, NEST 26, SLADS 45, SMPWC 48. */
const ecap = (...bits: number[]) => bits.reduce((v, n) => v | b(n), 0n);
const vtdHost = (e: bigint, caps = 0): HwInfo => ({
  cdev: '/dev/vfio/devices/vfio0', devId: 1, outDataType: 1, outDataTypeName: 'INTEL_VTD', outCapabilities: caps,
  capabilityNames: [], outMaxPasidLog2: 20, vtd: { flags: 0, capReg: 0n, ecapReg: e },
});
const smmuHost = (idr0: number, caps = 0x8, iidr = 0): HwInfo => ({
  cdev: '/dev/vfio/devices/vfio0', devId: 1, outDataType: 2, outDataTypeName: 'ARM_SMMUV3', outCapabilities: caps,
  capabilityNames: [], outMaxPasidLog2: 0, smmuv3: { flags: 0, idr: [idr0, 0, 0, 0x1414, 0, 0x74], iidr, aidr: 0 },
});

const ALL = [0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x8, 0x9, 0xa, 0xb];

describe('kernel model: IOMMU_HWPT_ALLOC answers predicted from the device’s hw info', () => {
  it('matches every answer the virtual lab’s kernel gave directly (emulated VT-d, real capture)', () => {
    const infos = lines('l1-iommufd-probe-hw-info.jsonl').map(hw);
    const allocs = lines('l1-iommufd-probe-hwpt-alloc.jsonl').map((l) => {
      const r = parseHwptAllocJson(l);
      if (!r.ok) throw new Error(r.reason);
      return r.value;
    });
    expect(allocs).to.have.length(infos.length);
    for (const [i, a] of allocs.entries()) {
      const h = infos.find((x) => x.cdev === a.cdev)!;
      expect(h, `hw info for ${a.cdev}`).to.not.equal(undefined);
      const seen = Object.fromEntries(a.results.map((r) => [`0x${r.flags.toString(16)}`, r.ok ? 'ok' : r.errno]));
      expect(answers(h, a.results.map((r) => r.flags)), `device ${i} (${a.cdev})`).to.deep.equal(seen);
    }
    expect(nestingParent(infos[0]!)).to.deep.equal({ ok: false, why: 'VT-d ecap.NEST=0: no nesting parent' });
  });

  it('a VT-d host with nesting and SSADS accepts NEST_PARENT, DIRTY_TRACKING and both, with and without PASID', () => {
    const e = ecap(43, 46, 47, 26, 45, 48);
    expect(vtdFeatures(e)).to.deep.equal({ scalableMode: true, firstStage: true, secondStage: true, nesting: true, dirty: true });
    expect(answers(vtdHost(e, 0x1), ALL)).to.deep.equal({
      '0x0': 'ok', '0x1': 'ok', '0x2': 'ok', '0x3': 'ok', '0x4': 'ENOENT', '0x5': 'EOPNOTSUPP', '0x8': 'ok', '0x9': 'ok', '0xa': 'ok', '0xb': 'ok',
    });
  });

  it('a VT-d host with nesting whose kernel does not report dirty tracking refuses DIRTY_TRACKING in iommufd, before the driver', () => {
    const a = predictHwptAlloc(vtdHost(ecap(43, 46, 26), 0x0), 0x3)!;
    expect(a).to.include({ ok: false, errno: 'EOPNOTSUPP' });
    expect(a.why).to.include('IOMMU_CAP_DIRTY_TRACKING');
  });

  it('VT-d legacy mode (no scalable mode): second stage only, no nesting parent', () => {
    expect(answers(vtdHost(ecap()), [0x0, 0x1, 0x8])).to.deep.equal({ '0x0': 'ok', '0x1': 'EOPNOTSUPP', '0x8': 'ok' });
    expect(nestingParent(vtdHost(ecap())).why).to.include('not in scalable mode');
  });

  it('matches the arm64 lab’s SMMUv3 (stage=nested, idr0 0x0d44101b, seen by hand): NEST_PARENT alone ok, NEST_PARENT|PASID refused', () => {
    const h = smmuHost(0x0d44101b);
    expect(smmuFeatures(h.smmuv3!.idr, 0)).to.include({ stage1: true, stage2: true, nesting: true });
    expect(answers(h, [0x0, 0x1, 0x2, 0x8, 0x9])).to.deep.equal({ '0x0': 'ok', '0x1': 'ok', '0x2': 'EOPNOTSUPP', '0x8': 'ok', '0x9': 'EOPNOTSUPP' });
    expect(predictHwptAlloc(h, 0x9)!.why).to.include('NEST_PARENT only alone');
  });

  it('SMMUv3 with only one stage (QEMU stage=1 / stage=2) has no nesting parent', () => {
    expect(answers(smmuHost(0x0d44101a), [0x1])).to.deep.equal({ '0x1': 'EOPNOTSUPP' });
    expect(answers(smmuHost(0x0d441019), [0x1, 0x8])).to.deep.equal({ '0x1': 'EOPNOTSUPP', '0x8': 'EOPNOTSUPP' });
  });

  it('SMMUv3 with dirty tracking: DIRTY alone and with PASID ok, with NEST_PARENT refused', () => {
    expect(answers(smmuHost(0x0d44109b, 0x1), [0x2, 0xa, 0x3])).to.deep.equal({ '0x2': 'ok', '0xa': 'ok', '0x3': 'EOPNOTSUPP' });
  });

  it('Arm MMU-600 r0 (erratum 1209401) loses nesting although S1P and S2P are set', () => {
    const iidr = (0x483 << 20) | (1 << 16) | 0x43b;
    const h = smmuHost(0x0d44101b, 0x8, iidr);
    expect(answers(h, [0x1])).to.deep.equal({ '0x1': 'EOPNOTSUPP' });
    expect(nestingParent(h).why).to.include('1209401');
  });

  it('an IOMMU type it does not model gives no prediction (the direct answer alone counts)', () => {
    expect(predictHwptAlloc({ ...vtdHost(0n), vtd: undefined, outDataType: 4, outDataTypeName: 'AMD' } as HwInfo, 0x1)).to.equal(undefined);
  });
});
