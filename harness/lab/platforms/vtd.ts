import { join } from 'node:path';
import { DEFAULT_INTEL_IOMMU, type GuestOptions } from '../../guest/boot.js';
import type { DeviceSpec } from '../../qemu/argv.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../../qemu/topology.js';
import { cacheDir, repoRoot } from '../../util/paths.js';
import type { VirtualLabOptions } from '../virtual-lab.js';
import type { LabDevice, LabPlatform, LabVfioUserDevice } from './platform.js';

/**
 * The VT-d virtual lab's L1, as data: an x86_64 q35 guest under TCG whose
 * emulated VT-d gives it a real /dev/iommu and vfio-pci. L1's root file system
 * is this machine's own `/`, shared read-only over virtio-9p, so L1 runs the
 * same Node, the same compiled harness and the same reference QEMU (as its
 * L2); a second, writable share brings results and artifacts back.
 */

/** Where the results share appears inside L1 (must exist in the read-only root). */
export const L1_RESULTS_MOUNT = '/mnt';

/**
 * Endpoints L1 can hand to vfio-pci. None of QEMU's emulated devices has a
 * PASID capability (facts §8); the synthetic vfio-user endpoints add those.
 */
export const DEFAULT_LAB_DEVICES: LabDevice[] = [
  { name: 'e1000e', device: { driver: 'e1000e', romfile: '' } },
  { name: 'igb', device: { driver: 'igb', romfile: '' } },
  { name: 'edu', device: { driver: 'edu' } },
  { name: 'iommu-testdev', device: { driver: 'iommu-testdev' } },
];

/**
 * Synthetic endpoints served over vfio-user from this process (harness/vfio-user):
 * L1's kernel sees them as real PCIe functions, with the PASID capability no
 * emulated device has. They take the root ports after the emulated devices.
 */
export const DEFAULT_VFIO_USER_DEVICES: LabVfioUserDevice[] = [
  { name: 'pasid-endpoint', device: 'pasid-endpoint' },
  { name: 'plain-endpoint', device: 'plain-endpoint' },
  // PASID capability, but DevCap2 without the TLP prefix bits: L1 cannot enable PASID.
  { name: 'pasid-no-tlp-prefix', device: 'pasid-no-tlp-prefix' },
];

/**
 * Devices L1's own drivers own, for the binding tests (tests/lab/host.test.ts,
 * role binding-test in qemu-configs/hosts/virtual-lab.yaml): a virtio-net
 * the binder takes and a killed run must give back, a virtio-net whose link
 * the test brings up, and a virtio-9p function the test mounts (both must be
 * refused). On the root ports after the vfio-user endpoints, so their L1
 * addresses are fixed: l1Bdf(7), l1Bdf(8), l1Bdf(9).
 */
export const BINDING_TEST_SHARE_TAG = 'labshare';
export const BINDING_TEST_DEVICES: LabDevice[] = [
  { name: 'net-down', device: { driver: 'virtio-net-pci', romfile: '' } },
  { name: 'net-up', device: { driver: 'virtio-net-pci', romfile: '' } },
  { name: 'share', device: { driver: 'virtio-9p-pci', fsdev: BINDING_TEST_SHARE_TAG, mount_tag: BINDING_TEST_SHARE_TAG } },
];

/**
 * L1 reserves this many 2 MiB pages at boot (kernel `hugepages=`), so that
 * an L2's RAM can be hugetlb-backed: L1's VT-d driver then maps it with 2 MiB
 * leaves, and L0's QEMU sends the vfio-user server one DMA_MAP per 2 MiB
 * instead of one per 4 KiB page (bench/lab-attach.ts).
 */
export const L1_HUGEPAGES = 320;

/** Folders L1 covers with tmpfs: host paths below them are invisible there. */
const L1_TMPFS = ['/tmp', '/run', '/var/tmp', '/dev/shm'];

/**
 * Extra read-only shares so L1 sees the checkout and the cache at the same
 * paths as L0. The checkout is always shared (a CI clone may live in /tmp);
 * the cache only when it lies below a folder L1 covers with tmpfs.
 */
export function l1Shares(repo = repoRoot, cache = cacheDir()): Array<{ tag: string; path: string }> {
  const masked = (p: string) => L1_TMPFS.some((t) => p === t || p.startsWith(`${t}/`));
  return [{ tag: 'repo', path: repo }, ...(masked(cache) ? [{ tag: 'cache', path: cache }] : [])];
}

/**
 * L1 as guest options: the lab devices and the vfio-user endpoints on their
 * root ports, the host's / as the read-only root, the results share, and the
 * checkout (and a cache below a tmpfs folder) at their L0 paths.
 * `vfioUser` are the -device specs of the running servers, in the order of `o.vfioUser`.
 */
export function virtualLabDescription(o: VirtualLabOptions, vfioUser: DeviceSpec[] = []): Omit<GuestOptions, 'image'> {
  const devs = o.devices ?? DEFAULT_LAB_DEVICES;
  const binding = o.bindingTestDevices === false ? [] : BINDING_TEST_DEVICES;
  const firstBindingPort = devs.length + vfioUser.length;
  const hugepages = o.hugepages ?? L1_HUGEPAGES;
  return {
    intelIommu: o.intelIommu ?? DEFAULT_INTEL_IOMMU,
    memoryMB: o.memoryMB ?? 3072,
    quiet: true,
    rootShare: {},
    resultsShare: { hostPath: o.resultsDir, guestPath: L1_RESULTS_MOUNT },
    extraShares: l1Shares().map((x) => ({ tag: x.tag, hostPath: x.path, guestPath: x.path })),
    append: hugepages > 0 ? [`hugepages=${hugepages}`] : [],
    globals: [NATIVE_PCIE_HOTPLUG],
    devices: [
      ...rootPorts(devs.length + vfioUser.length + binding.length + (o.extraDevices?.length ?? 0)),
      ...devs.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${i}` }) as DeviceSpec),
      ...vfioUser,
      ...binding.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${firstBindingPort + i}` }) as DeviceSpec),
      ...(o.extraDevices ?? []),
    ],
    // The binding tests' 9p function exports a small read-only folder of the checkout.
    extraArgs: binding.some((d) => d.device.driver === 'virtio-9p-pci')
      ? ['-fsdev', `local,id=${BINDING_TEST_SHARE_TAG},path=${join(repoRoot, 'qemu-configs')},security_model=none,readonly=on`]
      : [],
  };
}

/** L0's environment variables that L1's `harness run` gets too (everything else is L1's own, see runSuites). */
export const L1_PASSED_ENV = ['QEMU_X86_64', 'HARNESS_L2_QEMU_X86_64', 'HARNESS_TIMEOUT_MULTIPLIER', 'HARNESS_SOAK_CYCLES'] as const;

/** The VT-d lab (issue 5's): L1's own profile platform vtd, its L2 under TCG. */
export const VTD_LAB_PLATFORM: LabPlatform = {
  name: 'vtd',
  arch: 'x86_64',
  hostProfile: join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab.yaml'),
  resultsMount: L1_RESULTS_MOUNT,
  defaultDevices: DEFAULT_LAB_DEVICES,
  defaultVfioUser: DEFAULT_VFIO_USER_DEVICES,
  describe: virtualLabDescription,
  passedEnv: L1_PASSED_ENV,
  // L1's root is L0's /: the same QEMU and Node, reached as on L0.
  l1Env: {},
};
