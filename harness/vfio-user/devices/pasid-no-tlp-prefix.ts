import type { DeviceDescription } from '../description.js';
import { pasidEndpoint } from './pasid-endpoint.js';

/**
 * A PASID capability on a function that cannot carry the PASID TLP prefix
 * (DevCap2 bits 20 and 21 clear): the L1 kernel sees max_pasid_log2 20 but
 * cannot enable PASID, so iommufd reports capabilities 0.
 */
export const pasidNoTlpPrefix: DeviceDescription = {
  ...pasidEndpoint,
  name: 'pasid-no-tlp-prefix',
  deviceId: 0x0003,
  subsystemId: 0x0003,
  pcie: { extendedFmtField: false, endEndTlpPrefix: false },
};
