// Every row of the facts sheet's section 3 table ("Expected parent HWPT flags") and its
// vIOMMU flag bits, for each combination of host dirty tracking and host PASID.
import { expect } from 'chai';
import { expectHwpt, viommuFlags, type HostCaps, type ViommuConfig } from '../../harness/trace/oracle.js';

const hosts: { name: string; host: HostCaps; dirty: boolean; pasid: boolean }[] = [
  { name: 'plain host', host: { dirtyTracking: false, maxPasidLog2: 0 }, dirty: false, pasid: false },
  { name: 'dirty host', host: { dirtyTracking: true, maxPasidLog2: 0 }, dirty: true, pasid: false },
  { name: 'PASID host', host: { dirtyTracking: false, maxPasidLog2: 20 }, dirty: false, pasid: true },
  { name: 'dirty+PASID host', host: { dirtyTracking: true, maxPasidLog2: 20 }, dirty: true, pasid: true },
];

interface Row {
  name: string;
  viommu: ViommuConfig;
  viommuFlags: number;
  parent: (dirty: boolean, pasid: boolean) => number;
  nested: { flags: number; hwptType: number; len: number } | null;
}

const rows: Row[] = [
  { name: 'no vIOMMU', viommu: { kind: 'none' }, viommuFlags: 0, parent: (d) => (d ? 0x2 : 0x0), nested: null },
  { name: 'intel-iommu fsts=off', viommu: { kind: 'intel-iommu', fsts: false }, viommuFlags: 0, parent: (d) => (d ? 0x2 : 0x0), nested: null },
  // pasid-bits without fsts still gives vIOMMU flags 0 ("fsts=off → 0").
  { name: 'intel-iommu fsts=off pasid-bits=20', viommu: { kind: 'intel-iommu', fsts: false, pasidBits: 20 }, viommuFlags: 0, parent: (d) => (d ? 0x2 : 0x0), nested: null },
  {
    name: 'intel-iommu fsts=on pasid-bits=0', viommu: { kind: 'intel-iommu', fsts: true, pasidBits: 0 }, viommuFlags: 0x5,
    parent: (d) => (d ? 0x3 : 0x1), nested: { flags: 0x0, hwptType: 1, len: 24 },
  },
  {
    name: 'intel-iommu fsts=on pasid-bits=20', viommu: { kind: 'intel-iommu', fsts: true, pasidBits: 20 }, viommuFlags: 0xf,
    parent: (d, p) => (d ? 0x3 : 0x1) | (p ? 0x8 : 0), nested: { flags: 0x8, hwptType: 1, len: 24 },
  },
  { name: 'arm-smmuv3 accel=on ssidsize=0', viommu: { kind: 'arm-smmuv3', accel: true, ssidsize: 0 }, viommuFlags: 0x1, parent: () => 0x1, nested: null },
  { name: 'arm-smmuv3 accel=on ssidsize=20', viommu: { kind: 'arm-smmuv3', accel: true, ssidsize: 20 }, viommuFlags: 0x3, parent: () => 0x1, nested: null },
];

describe('trace oracle: HWPT flags QEMU must request (facts section 3)', function () {
  for (const row of rows) {
    for (const h of hosts) {
      const want = row.parent(h.dirty, h.pasid);
      it(`${row.name} on a ${h.name}: parent flags 0x${want.toString(16)}`, function () {
        const e = expectHwpt(row.viommu, h.host);
        expect(e.viommuFlags, 'vIOMMU flags').to.equal(row.viommuFlags);
        expect(e.allocates).to.equal(true);
        expect(e.parent).to.deep.include({ flags: want, hwptType: 0, len: 0, ptId: 'ioas' });
        expect(e.attach).to.deep.equal({ pasid: 0 });
        if (row.nested) expect(e.nested).to.deep.include({ ...row.nested, ptId: 'parent' });
        else expect(e.nested).to.equal(null);
        expect(e.explanation).to.include(`flags=0x${want.toString(16)}`);
      });
    }
  }

  it('arm-smmuv3 accel: ssidsize=auto follows the host SSIDSIZE, but the first device allocates before it is read', function () {
    const host = { dirtyTracking: true, maxPasidLog2: 20 };
    const auto: ViommuConfig = { kind: 'arm-smmuv3', accel: true, ssidsize: 'auto' };
    expect(viommuFlags(auto, { ...host, smmuSsid: true })).to.include({ flags: 0x1, afterSetIommuDevice: 0x3 });
    expect(viommuFlags(auto, { ...host, smmuSsid: true }, { firstDevice: false })).to.include({ flags: 0x3, afterSetIommuDevice: 0x3 });
    expect(viommuFlags(auto, { ...host, smmuSsid: false })).to.include({ flags: 0x1, afterSetIommuDevice: 0x1 });
    expect(viommuFlags(auto, { ...host, smmuSsid: true }).why).to.include('before set_iommu_device reads the host SSIDSIZE');
    // The synthesized PASID capability comes after set_iommu_device: it sees the host SSIDSIZE.
    expect(expectHwpt(auto, { ...host, smmuSsid: true }).synthesizesPasidCap).to.equal(true);
    expect(expectHwpt(auto, { ...host, smmuSsid: false }).synthesizesPasidCap).to.equal(false);
    const e = expectHwpt({ kind: 'arm-smmuv3', accel: true, ssidsize: 'auto' }, host);
    expect(e.parent?.flags).to.equal(0x1);
    expect(e.smmu?.viommuType).to.equal(1);
    expect(e.smmu?.bypassAbort).to.deep.include({ flags: 0, hwptType: 2, len: 16, ptId: 'viommu' });
    expect([e.smmu?.abort.role, e.smmu?.bypass.role, e.smmu?.nested.role]).to.deep.equal(['abort', 'bypass', 'nested']);
    expect(e.explanation).to.match(/no DIRTY_TRACKING: the vIOMMU wants a nesting parent without nesting dirty tracking/);
  });

  it('reusing an existing HWPT means no alloc line, only an attach with pasid 0', function () {
    const e = expectHwpt({ kind: 'intel-iommu', fsts: false }, { dirtyTracking: false, maxPasidLog2: 0 }, { reusesExistingHwpt: true });
    expect(e.allocates).to.equal(false);
    expect(e.parent).to.equal(null);
    expect(e.attach).to.deep.equal({ pasid: 0 });
    expect(e.explanation).to.match(/no alloc_hwpt line/);
  });

  it('explains PASID being left out when the host has none', function () {
    const e = expectHwpt({ kind: 'intel-iommu', fsts: true, pasidBits: 20 }, { dirtyTracking: true, maxPasidLog2: 0 });
    expect(e.parent?.flagNames).to.deep.equal(['NEST_PARENT', 'DIRTY_TRACKING']);
    expect(e.explanation).to.include('no PASID: the vIOMMU wants PASID attach but max_pasid_log2=0');
    expect(e.explanation).to.include('NEST_PARENT: the vIOMMU wants a nesting parent');
  });
});
