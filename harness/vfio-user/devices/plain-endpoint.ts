import type { DeviceDescription } from '../description.js';

/**
 * An endpoint without PASID, ATS or PRI: the control in every scenario, and
 * the base the other descriptions vary. 0x7e57 is no registered vendor, so no
 * in-tree driver claims the device before vfio-pci does.
 */
export const plainEndpoint: DeviceDescription = {
  name: 'plain-endpoint',
  vendorId: 0x7e57,
  deviceId: 0x0001,
  subsystemVendorId: 0x7e57,
  subsystemId: 0x0001,
  revision: 1,
  classCode: 0xff0000,
  bars: [
    { index: 0, size: 0x4000 },
    { index: 2, size: 0x100000, is64: true, prefetchable: true },
  ],
  pm: true,
  msi: false,
  pcie: { extendedFmtField: false, endEndTlpPrefix: false },
  // L1's vfio-pci resets the function at every open and close: FLR with
  // immediate readiness costs it a few config accesses, where a secondary
  // bus reset cost about 200 ms and a full DMA remap in L0 (README, Resets).
  reset: { flr: true, pmSoftReset: true, immediateReadiness: true },
};
