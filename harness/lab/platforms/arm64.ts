import type { GuestOptions } from '../../guest/boot.js';
import type { DeviceSpec } from '../../qemu/argv.js';
import { rootPorts } from '../../qemu/topology.js';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootGuest, guestDescription } from '../../guest/boot.js';
import type { GuestImage } from '../../guest/image.js';
import type { MachineDescription } from '../../qemu/argv.js';
import { findQemu } from '../../qemu/binary.js';
import type { Machine } from '../../qemu/machine.js';
import { iortLayoutKey, iortOverride, readL1Iort, withIortOverride, type IortOverride } from '../iort.js';
import { cacheDir, repoRoot } from '../../util/paths.js';
import type { VirtualLabOptions } from '../virtual-lab.js';
import type { LabDevice, LabPlatform } from './platform.js';

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
 * As a virtual lab platform (ARM64_LAB_PLATFORM), harness/lab/virtual-lab.ts
 * boots it and runs the lab suites in it with the smmuv3 host profile.
 */

/** An emulated endpoint on its own root port (rpN, L1 bus N+1). */
export type Arm64LabDevice = LabDevice;

/**
 * Endpoints an arm64 L1 can hand to vfio-pci. vfio-user ones cannot sit
 * behind QEMU's SMMUv3 (it refuses the MAP notifier a VFIO container needs,
 * facts §11), so the arm64 lab has emulated endpoints only.
 */
export const DEFAULT_ARM64_LAB_DEVICES: Arm64LabDevice[] = [
  { name: 'e1000e', device: { driver: 'e1000e', romfile: '' } },
  // A second endpoint for the two-device scenarios (one vSMMU, two vfio-pci devices).
  { name: 'igb', device: { driver: 'igb', romfile: '' } },
];

export interface Arm64L1Options {
  /** Devices added after the lab devices (each gets one more root port; give them their own bus). */
  extraDevices?: DeviceSpec[];
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
    devices: [
      ...rootPorts(devs.length + (o.extraDevices?.length ?? 0)),
      ...devs.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${i}` }) as DeviceSpec),
      ...(o.extraDevices ?? []),
    ],
  };
}

/** Where the results share appears in the arm64 L1 (the arm64 root gets the folder when missing). */
export const ARM64_L1_RESULTS_MOUNT = '/mnt';

/** The arm64 root's own QEMU: L2's, a native aarch64 binary there (never L0's reference manifest, an x86 build). */
export const ARM64_ROOT_QEMU = '/usr/bin/qemu-system-aarch64';

function arm64LabDescription(o: VirtualLabOptions, vfioUser: DeviceSpec[]): Omit<GuestOptions, 'image'> {
  // QEMU's SMMUv3 refuses the MAP notifier a VFIO container needs (facts §11).
  if (vfioUser.length > 0)
    throw new Error(`vfioUser: the arm64 lab takes no vfio-user endpoints (${vfioUser.map((v) => v.id).join(', ')}): QEMU's SMMUv3 cannot front them`);
  if (o.intelIommu !== undefined) throw new Error("intelIommu: the arm64 lab's vIOMMU is arm-smmuv3, not intel-iommu");
  return arm64L1Description({
    resultsDir: o.resultsDir,
    resultsMount: ARM64_L1_RESULTS_MOUNT,
    ...(o.devices ? { devices: o.devices } : {}),
    ...(o.extraDevices ? { extraDevices: o.extraDevices } : {}),
    ...(o.memoryMB ? { memoryMB: o.memoryMB } : {}),
    ...(o.hugepages !== undefined ? { hugepages: o.hugepages } : {}),
  });
}

/**
 * The SMMUv3 lab: L1 an arm64 `virt` guest under TCG with EL2 (so KVM works
 * inside it, and L2 runs `-accel kvm` with arm-smmuv3 accel=on), its profile
 * qemu-configs/hosts/virtual-lab-smmuv3.yaml.
 */
export const ARM64_LAB_PLATFORM: LabPlatform = {
  name: 'arm64',
  arch: 'aarch64',
  hostProfile: join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab-smmuv3.yaml'),
  resultsMount: ARM64_L1_RESULTS_MOUNT,
  defaultDevices: DEFAULT_ARM64_LAB_DEVICES,
  defaultVfioUser: [],
  describe: arm64LabDescription,
  // Not L0's QEMUs: those are x86 binaries; L1 has its own.
  passedEnv: ['HARNESS_TIMEOUT_MULTIPLIER', 'HARNESS_SOAK_CYCLES'],
  l1Env: { QEMU_AARCH64: ARM64_ROOT_QEMU, HARNESS_L2_QEMU_AARCH64: ARM64_ROOT_QEMU },
};

export interface Arm64LabImage {
  /** The image whose initrd carries the IORT override in front. */
  image: GuestImage;
  override: IortOverride;
  /** Milliseconds spent booting an L1 to read QEMU's IORT (0: it came from the cache). */
  dumpMs: number;
}

/**
 * The arm64 lab's L1 image with the IORT override (harness/lab/iort.ts): the
 * table QEMU builds for this L1's machine layout, read once from an L1 booted
 * with the plain initrd and cached under a key of L0's QEMU binary and that
 * layout, CANWBS set; the initrd built with it in front.
 */
export async function arm64LabImage(launch: (d: MachineDescription) => Promise<Machine>, image: GuestImage, o: VirtualLabOptions): Promise<Arm64LabImage> {
  const l1 = { image, ...arm64LabDescription(o, []) };
  const d = guestDescription(l1);
  const qemu = findQemu('aarch64');
  const key = iortLayoutKey(createHash('sha256').update(readFileSync(qemu.path)).digest('hex'), {
    machine: d.machine,
    cpu: d.cpu,
    smp: d.smp,
    memoryMB: d.memoryMB,
    devices: d.devices,
  });
  let dumpMs = 0;
  const override = await iortOverride(key, async () => {
    const t0 = Date.now();
    // The dump's L1 shares the results folder too (same layout), before VirtualLab.start has made it.
    if (o.resultsDir) mkdirSync(o.resultsDir, { recursive: true });
    const g = await bootGuest(launch, l1, { readyTimeoutMs: 120_000 });
    try {
      return await readL1Iort(g.agent);
    } finally {
      await g.machine.shutdown();
      dumpMs = Date.now() - t0;
    }
  });
  return { image: withIortOverride(image, override), override, dumpMs };
}
