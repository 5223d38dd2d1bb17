// The oracle driven by the capability sets of real hosts, with the kernel's predicted answer
// (harness/host/kernel-model.ts) to what the oracle says QEMU asks; the PASID capability rule;
// and the failure message's shape.
import * as chai from 'chai';
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseHwInfoJson, type HwInfo } from '../../harness/host/hwinfo.js';
import { predictHwptAlloc } from '../../harness/host/kernel-model.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { describeMismatch, expectHwpt, hostCapsOf, viommuFlags, type ViommuConfig } from '../../harness/trace/oracle.js';
import { repoRoot } from '../../harness/util/paths.js';
import { failure, fixtureModel } from './trace-fixtures.js';

chai.use(iommufdAssertions);

const bit = (n: number) => 1n << BigInt(n);
/** The virtual lab's PASID endpoint, as L1's iommufd-probe printed it (tests/fixtures/host/). */
const labPasid = ((): HwInfo => {
  const line = readFileSync(join(repoRoot, 'tests', 'fixtures', 'host', 'l1-iommufd-probe-hw-info.jsonl'), 'utf8').split('\n')[0]!;
  const r = parseHwInfoJson(line);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
})();
/**
 * A VT-d host with nesting and dirty tracking: the lab's registers plus the VT-d spec's ecap bits
 * NEST (26), SLADS (45), FLTS (47), SMPWC (48), and iommufd's DIRTY_TRACKING capability, which
 * the kernel reports on such an IOMMU.
 */
const vtdNestDirty: HwInfo = {
  ...labPasid,
  outCapabilities: labPasid.outCapabilities | 0x1,
  capabilityNames: ['DIRTY_TRACKING', ...labPasid.capabilityNames],
  vtd: { ...labPasid.vtd!, ecapReg: labPasid.vtd!.ecapReg | bit(26) | bit(45) | bit(47) | bit(48) },
};
/** The arm64 lab's device (tests/fixtures/trace/arm64/README.md): SMMUv3 stage 1+2, no dirty tracking, no PASID. */
const smmuNest: HwInfo = {
  cdev: '/dev/vfio/devices/vfio0', devId: 1, outDataType: 2, outDataTypeName: 'ARM_SMMUV3', outCapabilities: 0x8,
  capabilityNames: ['PCI_ATS_NOT_SUPPORTED'], outMaxPasidLog2: 0, smmuv3: { flags: 0, idr: [0x0d44101b, 0, 0, 0x1414, 0, 0x74], iidr: 0, aidr: 0 },
};

const configs: Record<string, ViommuConfig> = {
  none: { kind: 'none' },
  'fsts=off pasid-bits=20': { kind: 'intel-iommu', fsts: false, pasidBits: 20 },
  'fsts=on pasid-bits=0': { kind: 'intel-iommu', fsts: true, pasidBits: 0 },
  'fsts=on pasid-bits=20': { kind: 'intel-iommu', fsts: true, pasidBits: 20 },
  'smmuv3 accel': { kind: 'arm-smmuv3', accel: true, ssidsize: 'auto' },
};

const ask = (hw: HwInfo, config: string) => {
  const e = expectHwpt(configs[config]!, hostCapsOf(hw));
  const k = predictHwptAlloc(hw, e.parent!.flags);
  return `0x${e.parent!.flags.toString(16)} ${k ? (k.ok ? 'ok' : k.errno) : 'unknown'}`;
};

describe('oracle on real hosts: what QEMU asks, and what the kernel answers', function () {
  it('VT-d with nesting and dirty tracking (SSADS): dirty everywhere, nesting parent with dirty, PASID: all granted', function () {
    expect(hostCapsOf(vtdNestDirty)).to.deep.equal({ dirtyTracking: true, maxPasidLog2: 20 });
    expect(Object.keys(configs).slice(0, 4).map((c) => ask(vtdNestDirty, c))).to.deep.equal(['0x2 ok', '0x2 ok', '0x3 ok', '0xb ok']);
    expect(expectHwpt(configs['fsts=on pasid-bits=20']!, hostCapsOf(vtdNestDirty)).parent?.because).to.equal(
      'fsts wants a nesting parent, the host has dirty tracking, the device has PASID (max_pasid_log2=20)',
    );
  });

  it('VT-d of the virtual lab (no nesting, no dirty): 0x0 granted, 0x1 and 0x9 refused with EOPNOTSUPP, as its kprobes saw', function () {
    expect(hostCapsOf(labPasid)).to.deep.equal({ dirtyTracking: false, maxPasidLog2: 20 });
    expect(Object.keys(configs).slice(0, 4).map((c) => ask(labPasid, c))).to.deep.equal(['0x0 ok', '0x0 ok', '0x1 EOPNOTSUPP', '0x9 EOPNOTSUPP']);
  });

  it('SMMUv3 with nesting (IDR0 0x0d44101b), no dirty tracking: accel asks exactly 0x1, granted', function () {
    expect(hostCapsOf(smmuNest)).to.deep.equal({ dirtyTracking: false, maxPasidLog2: 0, smmuSsid: false });
    expect(ask(smmuNest, 'smmuv3 accel')).to.equal('0x1 ok');
    expect(ask(smmuNest, 'none')).to.equal('0x0 ok');
    expect(predictHwptAlloc(smmuNest, 0x2)).to.include({ ok: false, errno: 'EOPNOTSUPP' });
  });
});

describe('oracle: intel-iommu vIOMMU flags and the synthesized PASID capability', function () {
  const pasidDev = { dirtyTracking: false, maxPasidLog2: 20 };
  const plainDev = { dirtyTracking: false, maxPasidLog2: 0 };
  const rows: [string, ViommuConfig, number, boolean, boolean][] = [
    // config, vIOMMU flags, synthesized for a PASID device, for a device without PASID
    ['fsts=off pasid-bits=0', { kind: 'intel-iommu', fsts: false, pasidBits: 0 }, 0x0, false, false],
    ['fsts=off pasid-bits=20', { kind: 'intel-iommu', fsts: false, pasidBits: 20 }, 0x0, false, false],
    ['fsts=on pasid-bits=0', { kind: 'intel-iommu', fsts: true, pasidBits: 0 }, 0x5, false, false],
    ['fsts=on pasid-bits=20', { kind: 'intel-iommu', fsts: true, pasidBits: 20 }, 0xf, true, false],
    ['no vIOMMU', { kind: 'none' }, 0x0, false, false],
  ];
  for (const [name, v, flags, withPasid, withoutPasid] of rows) {
    it(`${name}: vIOMMU flags 0x${flags.toString(16)}; PASID capability ${withPasid ? 'synthesized' : 'not synthesized'} for a PASID device`, function () {
      expect(viommuFlags(v, pasidDev).flags).to.equal(flags);
      const e = expectHwpt(v, pasidDev);
      expect(e.synthesizesPasidCap).to.equal(withPasid);
      expect(expectHwpt(v, plainDev).synthesizesPasidCap).to.equal(withoutPasid);
      expect(e.pasidCapWhy).to.match(/^hw\/vfio\/pci\.c vfio_pci_synthesize_pasid_cap: needs get_pasid_info \(the device's max_pasid_log2 > 0\) and the vIOMMU flag PASID_SUPPORTED/);
      expect(e.explanation).to.include(e.pasidCapWhy);
    });
  }

  it('a QEMU that sets PASID_SUPPORTED from pasid-bits alone would synthesize under fsts=off, and still ask 0x0', function () {
    const v: ViommuConfig = { kind: 'intel-iommu', fsts: false, pasidBits: 20 };
    const e = expectHwpt(v, pasidDev, { vtdPasidSupportedWithoutFsts: true });
    expect(e).to.include({ viommuFlags: 0x2, synthesizesPasidCap: true });
    expect(e.parent?.flags).to.equal(0x0);
  });

  it('11.1.3 in the virtual lab: fsts=off, pasid-bits=20, PASID device (max_pasid_log2=20): no vfio_pci_synthesize_pasid_cap line', function () {
    // The L2 trace had the event enabled (harness/lab/l2.ts L2_TRACE_EVENTS) and the realize completed.
    const m = fixtureModel('l1-pasid-scalable-pasid20-0x0-accepted.log');
    expect(m.pasidCaps).to.deep.equal([]);
    expect(m).to.have.pasidCapPerOracle(expectHwpt(configs['fsts=off pasid-bits=20']!, pasidDev));
    const upstream = expectHwpt(configs['fsts=off pasid-bits=20']!, pasidDev, { vtdPasidSupportedWithoutFsts: true });
    expect(failure(() => expect(m).to.have.pasidCapPerOracle(upstream))).to.include('expected a vfio_pci_synthesize_pasid_cap line for the device, found none');
  });

  it('a synthesized capability line is read (facts fixture: fsts=on, pasid-bits>0)', function () {
    const m = fixtureModel('facts-vtd-nested-pasid.log');
    expect(m.pasidCaps.map((c) => [c.name, c.offset])).to.deep.equal([['0000:3b:00.0', 0xff8]]);
    expect(m).to.have.pasidCapPerOracle(expectHwpt(configs['fsts=on pasid-bits=20']!, { dirtyTracking: true, maxPasidLog2: 20 }));
  });
});

describe('oracle failure messages: what QEMU asked, what the oracle requires, why', function () {
  const e = expectHwpt(configs['fsts=on pasid-bits=20']!, { dirtyTracking: false, maxPasidLog2: 20 });

  it('pins the shape', function () {
    expect(describeMismatch(e, [0x0], 'dev_id 1')).to.equal(
      'dev_id 1: requested 0x0 (none), expected 0x9 (NEST_PARENT|PASID): fsts wants a nesting parent, the device has PASID (max_pasid_log2=20)',
    );
    expect(describeMismatch(e, [])).to.equal(
      'the device: requested nothing (no alloc_hwpt line), expected 0x9 (NEST_PARENT|PASID): fsts wants a nesting parent, the device has PASID (max_pasid_log2=20)',
    );
    const none = expectHwpt({ kind: 'none' }, { dirtyTracking: false, maxPasidLog2: 0 });
    expect(describeMismatch(none, [0x1])).to.equal('the device: requested 0x1 (NEST_PARENT), expected 0x0 (none): no vIOMMU wish for nesting or PASID, the host has no dirty tracking');
  });

  it('requestedPerOracle leads with it: a QEMU without the series asks 0x0 where fsts=on wants 0x9', function () {
    // The real 0x0 request of the virtual lab's PASID device, held against the fsts=on oracle.
    const m = fixtureModel('l1-pasid-scalable-pasid20-0x0-accepted.log');
    const msg = failure(() => expect(m).to.have.requestedPerOracle(e, { devId: 1 }));
    expect(msg.split('\n')[0]).to.equal(
      'dev_id 1: requested 0x0 (none), expected 0x9 (NEST_PARENT|PASID): fsts wants a nesting parent, the device has PASID (max_pasid_log2=20)',
    );
    expect(msg).to.include('L6: dev_id=1 pt_id=2 (ioas) flags=0x0 (none)');
  });
});
