import type { GuestOptions } from '../../guest/boot.js';
import type { DeviceSpec } from '../../qemu/argv.js';
import { rootPorts } from '../../qemu/topology.js';
import { cacheDir, repoRoot } from '../../util/paths.js';

/**
 * The arm64 virtual lab's L1, as guest options (the image, from
 * findGuestImage('aarch64'), is the caller's): an aarch64 `virt` machine
 * under TCG with EL2, GICv3, UEFI and ACPI, an emulated SMMUv3 with nesting
 * (the platform's vIOMMU, harness/guest/platform.ts), and emulated endpoints
 * on root ports for L1 to hand to vfio-pci. L1's root is the arm64 root
 * (scripts/install-arm64-root.sh) over read-only 9p: its Node runs the
 * harness, its qemu-system-aarch64 is L2's QEMU. The host's checkout and
 * cache are shared at their host paths, always: unlike the x86 lab, whose
 * root is the host's / and has them already, the arm64 root has neither.
 *
 * Kept apart from harness/lab/virtual-lab.ts until that becomes one code path
 * for both platforms (issue 10, part 2); what it needs from there is data.
 */

/** An emulated endpoint on its own root port (rpN, L1 bus N+1). */
export interface Arm64LabDevice {
  name: string;
  device: Omit<DeviceSpec, 'bus' | 'id'>;
}

/**
 * Endpoints an arm64 L1 can hand to vfio-pci. vfio-user ones cannot sit
 * behind QEMU's SMMUv3 (it refuses the MAP notifier a VFIO container needs,
 * facts §11), so the arm64 lab has emulated endpoints only.
 */
export const DEFAULT_ARM64_LAB_DEVICES: Arm64LabDevice[] = [{ name: 'e1000e', device: { driver: 'e1000e', romfile: '' } }];

export interface Arm64L1Options {
  devices?: Arm64LabDevice[];
  /** L0 folder shared writable with L1, mounted at `resultsMount`. */
  resultsDir?: string;
  /** Where the results share appears in L1 (made in the arm64 root when missing). Default /mnt. */
  resultsMount?: string;
  memoryMB?: number;
  /** 2 MiB pages L1 reserves at boot (kernel `hugepages=`), for hugetlb-backed L2 RAM. Default 0. */
  hugepages?: number;
  repo?: string;
  cache?: string;
}

/** The read-only shares every arm64 L1 gets: the checkout and the cache, at their host paths. */
export function arm64L1Shares(repo = repoRoot, cache = cacheDir()): Array<{ tag: string; hostPath: string; guestPath: string }> {
  return [
    { tag: 'repo', hostPath: repo, guestPath: repo },
    { tag: 'cache', hostPath: cache, guestPath: cache },
  ];
}

export function arm64L1Description(o: Arm64L1Options = {}): Omit<GuestOptions, 'image'> {
  const devs = o.devices ?? DEFAULT_ARM64_LAB_DEVICES;
  const hugepages = o.hugepages ?? 0;
  return {
    memoryMB: o.memoryMB ?? 2048,
    quiet: true,
    rootShare: {},
    ...(o.resultsDir ? { resultsShare: { hostPath: o.resultsDir, guestPath: o.resultsMount ?? '/mnt' } } : {}),
    extraShares: arm64L1Shares(o.repo, o.cache),
    append: hugepages > 0 ? [`hugepages=${hugepages}`] : [],
    devices: [...rootPorts(devs.length), ...devs.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${i}` }) as DeviceSpec)],
  };
}
