import type { DeviceDescription } from '../description.js';
import { plainEndpoint } from './plain-endpoint.js';

/**
 * The endpoint the virtual lab needs: PASID (20 bits, exec and privileged
 * mode), ATS and PRI, and DevCap2 bits 20 and 21 so that the L1 kernel can
 * enable PASID on it.
 */
export const pasidEndpoint: DeviceDescription = {
  ...plainEndpoint,
  name: 'pasid-endpoint',
  deviceId: 0x0002,
  subsystemId: 0x0002,
  pcie: { extendedFmtField: true, endEndTlpPrefix: true },
  pasid: { widthBits: 20, exec: true, priv: true },
  ats: { invalidateQueueDepth: 0, pageAlignedRequest: true, globalInvalidate: false },
  pri: { outstandingPageRequests: 512, prgResponsePasidRequired: true },
};
