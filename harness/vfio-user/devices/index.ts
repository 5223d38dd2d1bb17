import { loadDeviceDescriptionFile, validateDeviceDescription, type DeviceDescription } from '../description.js';
import { pasidEndpoint } from './pasid-endpoint.js';
import { pasidNoTlpPrefix } from './pasid-no-tlp-prefix.js';
import { plainEndpoint } from './plain-endpoint.js';

/** The built-in descriptions, by name. */
export const deviceDescriptions: Readonly<Record<string, DeviceDescription>> = Object.freeze({
  [pasidEndpoint.name]: pasidEndpoint,
  [plainEndpoint.name]: plainEndpoint,
  [pasidNoTlpPrefix.name]: pasidNoTlpPrefix,
});

/**
 * A built-in description by name, or a JSON file by path (anything with a
 * slash or ending in .json), validated either way.
 */
export function loadDeviceDescription(nameOrPath: string): DeviceDescription {
  if (nameOrPath.includes('/') || nameOrPath.endsWith('.json')) return loadDeviceDescriptionFile(nameOrPath);
  const d = deviceDescriptions[nameOrPath];
  if (!d) throw new Error(`no built-in device description "${nameOrPath}" (known: ${Object.keys(deviceDescriptions).join(', ')})`);
  return validateDeviceDescription(d);
}

export { pasidEndpoint, pasidNoTlpPrefix, plainEndpoint };
