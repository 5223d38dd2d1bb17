import { expect } from 'chai';
import {
  decodedFields, errnoName, errnoValue, formatHwptFlags, hwCapNames, hwInfoTypeName, hwptDataTypeName, hwptFlagNames,
  hwptFlagsFromNames, viommuFlagNames, viommuTypeName,
} from '../../harness/trace/flags.js';

describe('trace flags: uAPI numbers and names', function () {
  it('decodes HWPT alloc flags low bit first and encodes them back', function () {
    expect(hwptFlagNames(0)).to.deep.equal([]);
    expect(hwptFlagNames(0xb)).to.deep.equal(['NEST_PARENT', 'DIRTY_TRACKING', 'PASID']);
    expect(hwptFlagNames(0x4)).to.deep.equal(['FAULT_ID_VALID']);
    expect(hwptFlagsFromNames(['NEST_PARENT', 'PASID'])).to.equal(0x9);
    expect(hwptFlagsFromNames(['IOMMU_HWPT_ALLOC_DIRTY_TRACKING'])).to.equal(0x2);
    for (let v = 0; v < 64; v++) expect(hwptFlagsFromNames(hwptFlagNames(v))).to.equal(v);
  });

  it('shows unknown bits as hex instead of dropping them', function () {
    expect(hwptFlagNames(0x31)).to.deep.equal(['NEST_PARENT', '0x30']);
    expect(formatHwptFlags(0x29)).to.equal('0x29 (NEST_PARENT|PASID|0x20)');
    expect(formatHwptFlags(0)).to.equal('0x0 (none)');
    expect(hwInfoTypeName(9)).to.equal('0x9');
    expect(hwptFlagNames(1n << 40n)).to.deep.equal(['0x10000000000']);
  });

  it('names an unknown flag name in the error', function () {
    expect(() => hwptFlagsFromNames(['NEST_PARNET'])).to.throw(/unknown flag name "NEST_PARNET"/);
  });

  it('decodes caps, hw info types, data types, vIOMMU types and QEMU vIOMMU flags', function () {
    expect(hwCapNames(0xf)).to.deep.equal(['DIRTY_TRACKING', 'PCI_PASID_EXEC', 'PCI_PASID_PRIV', 'PCI_ATS_NOT_SUPPORTED']);
    expect([0, 1, 2, 3, 4].map(hwInfoTypeName)).to.deep.equal(['NONE', 'INTEL_VTD', 'ARM_SMMUV3', 'TEGRA241_CMDQV', 'AMD']);
    expect([0, 1, 2, 3].map(hwptDataTypeName)).to.deep.equal(['NONE', 'VTD_S1', 'ARM_SMMUV3', 'AMD_GUEST']);
    expect([0, 1, 2].map(viommuTypeName)).to.deep.equal(['DEFAULT', 'ARM_SMMUV3', 'TEGRA241_CMDQV']);
    expect(viommuFlagNames(0x5)).to.deep.equal(['WANT_NESTING_PARENT', 'WANT_NESTING_DIRTY_TRACKING']);
  });

  it('names errnos both ways', function () {
    expect([errnoName(-95), errnoName(-22), errnoName(-2), errnoName(0), errnoName(-4095)]).to.deep.equal([
      'EOPNOTSUPP', 'EINVAL', 'ENOENT', 'OK', 'errno -4095',
    ]);
    expect(errnoValue('EOPNOTSUPP')).to.equal(-95);
    expect(errnoValue(-22)).to.equal(-22);
    expect(() => errnoValue('ENOTREAL')).to.throw(/ENOTREAL/);
  });

  it('decodes the fields of iommufd events for trace decode', function () {
    expect(decodedFields('iommufd_backend_alloc_hwpt', { flags: 0x9, hwpt_type: 1, ret: -95 })).to.deep.equal({
      flags: ['NEST_PARENT', 'PASID'], hwpt_type: 'VTD_S1', ret: 'EOPNOTSUPP',
    });
    expect(decodedFields('iommufd_backend_alloc_viommu', { type: 1, ret: 0 })).to.deep.equal({ type: 'ARM_SMMUV3' });
    expect(decodedFields('pci_cfg_read', { val: 1 })).to.deep.equal({});
  });
});
