import type { GuestOptions } from '../../guest/boot.js';
import type { DeviceSpec } from '../../qemu/argv.js';
import type { DeviceDescription } from '../../vfio-user/description.js';
import type { VirtualLabOptions } from '../virtual-lab.js';

/**
 * What makes a virtual lab VT-d or SMMUv3, as data: harness/lab/virtual-lab.ts
 * is one code path (start L1, run the lab suites in it, bring the results
 * back) and takes one of these (platforms/vtd.ts, platforms/arm64.ts).
 */

/** An emulated endpoint on its own root port; the L1 BDF follows from the port order. */
export interface LabDevice {
  /** Short name used in the host profile and test titles. */
  name: string;
  device: Omit<DeviceSpec, 'bus' | 'id'>;
}

/**
 * A synthetic endpoint served over vfio-user from this process (harness/vfio-user):
 * L1's kernel sees it as a real PCIe function.
 */
export interface LabVfioUserDevice {
  /** Short name used in the host profile and as the QEMU id (`lab-NAME`). */
  name: string;
  /** A built-in description name or JSON path, or a description. */
  device: string | DeviceDescription;
}

export interface LabPlatform {
  /** Short name for titles and logs. */
  name: string;
  /** L1's guest architecture (the image is findGuestImage(arch)). */
  arch: 'x86_64' | 'aarch64';
  /** The host profile L1's `harness run` gets. */
  hostProfile: string;
  /** Where the results share appears in L1. */
  resultsMount: string;
  /** The emulated endpoints when the options name none. */
  defaultDevices: LabDevice[];
  /** The vfio-user endpoints when the options name none ([]: the platform takes none). */
  defaultVfioUser: LabVfioUserDevice[];
  /**
   * L1 as guest options (the image is the caller's). `vfioUser` are the -device
   * specs of the running vfio-user servers, in the order of the options' vfioUser.
   */
  describe(o: VirtualLabOptions, vfioUser: DeviceSpec[]): Omit<GuestOptions, 'image'>;
  /** L0's environment variables that L1's `harness run` gets too. */
  passedEnv: readonly string[];
  /** Variables of L1's own for its `harness run` (after passedEnv: L1's QEMU is L1's). */
  l1Env: Record<string, string>;
}

/** The root port of the Nth vfio-user device (after the emulated lab devices). */
export function vfioUserPort(devices: LabDevice[], n: number): string {
  return `rp${devices.length + n}`;
}
