import type { Props, PropValue } from '../qemu/argv.js';
import type { GuestArch, GuestImage } from './image.js';

/**
 * What differs between an x86 and an arm64 harness guest, as data: the
 * machine, the CPU, the kernel console, the vIOMMU and where it sits, the
 * firmware, and what the 9p root is by default. guestDescription() reads it
 * for the image's architecture; nothing else in the guest code branches on
 * the architecture.
 */
export interface GuestPlatform {
  arch: GuestArch;
  /** -machine TYPE and its properties; `viommu` says whether the guest has one. */
  machine(viommu: boolean): { type: string; props: Props };
  /** -cpu under TCG. */
  cpu: string;
  /** The kernel's console= value (the first serial port). */
  console: string;
  /**
   * The guest's vIOMMU: its driver, the properties that place it (always
   * set) and the default ones (what a test may override).
   */
  viommu: { driver: string; placement: Props; defaults: Record<string, PropValue> };
  /** Kernel command-line words the platform needs. */
  append: string[];
  /** QEMU arguments for the firmware (none: QEMU's default). */
  firmwareArgs(image: GuestImage): string[];
  /** The host folder a default root share (`rootShare: {}`) exports. */
  defaultRoot(image: GuestImage): string;
}

/**
 * The intel-iommu of the guest-side tests: scalable mode with 20 PASID bits,
 * device IOTLB, interrupt remapping and caching mode (as for device
 * assignment). Property names are QEMU 11.1's (see the facts sheet, section 1).
 */
export const DEFAULT_INTEL_IOMMU: Record<string, PropValue> = {
  intremap: 'on',
  'scalable-mode': true,
  'pasid-bits': 20,
  'device-iotlb': true,
  'caching-mode': true,
};

/**
 * The arm64 guest's SMMUv3: stage=nested gives stage 1 and stage 2, so the
 * guest kernel accepts an IOMMU_HWPT_ALLOC_NEST_PARENT (with stage=1 or
 * stage=2 it refuses one: facts §12).
 */
export const DEFAULT_SMMUV3: Record<string, PropValue> = { stage: 'nested' };

export const X86_64_PLATFORM: GuestPlatform = {
  arch: 'x86_64',
  // Interrupt remapping needs the split irqchip under KVM; TCG takes it too.
  machine: (viommu): { type: string; props: Props } => ({ type: 'q35', props: viommu ? { 'kernel-irqchip': 'split' } : {} }),
  cpu: 'max',
  console: 'ttyS0,115200',
  viommu: { driver: 'intel-iommu', placement: {}, defaults: DEFAULT_INTEL_IOMMU },
  // Under TCG on a loaded host the IO-APIC timer check can miss its ticks, and
  // with interrupt remapping the kernel then panics ("timer doesn't work
  // through Interrupt-remapped IO-APIC"): seen booting L1 while other QEMUs ran.
  append: ['no_timer_check'],
  firmwareArgs: () => [],
  // The x86 guest runs the host's own binaries: its 9p root is the host's /.
  defaultRoot: () => '/',
};

export const AARCH64_PLATFORM: GuestPlatform = {
  arch: 'aarch64',
  // EL2 for KVM inside the guest (an L2 with -accel kvm), GICv3 with its ITS
  // for MSIs (and the in-kernel irqchip arm-smmuv3 accel=on needs there).
  machine: () => ({ type: 'virt', props: { virtualization: true, 'gic-version': 3 } }),
  // Pointer authentication with QEMU's cheap IMPLEMENTATION DEFINED
  // algorithm instead of emulating QARMA5: sid's arm64 binaries sign every
  // return address. Measured on a busy 2-core host: `node -e` in L1 took
  // 5.6-6.0 s with it, 7.4-10.8 s without.
  cpu: 'max,pauth-impdef=on',
  console: 'ttyAMA0',
  // The user-creatable SMMUv3 translates the bus it is given: the root
  // complex, so every device of the guest is behind it.
  viommu: { driver: 'arm-smmuv3', placement: { 'primary-bus': 'pcie.0' }, defaults: DEFAULT_SMMUV3 },
  // UEFI boots the kernel (EFI stub) and hands it QEMU's ACPI tables; the
  // SMMU is described by IORT only (arm-smmuv3 accel=on refuses device tree).
  append: ['acpi=force'],
  firmwareArgs: (image) => ['-bios', requireRoot(image).uefi],
  // The host's binaries are x86: the guest boots into the arm64 root.
  defaultRoot: (image) => requireRoot(image).path,
};

export const GUEST_PLATFORMS: Record<GuestArch, GuestPlatform> = { x86_64: X86_64_PLATFORM, aarch64: AARCH64_PLATFORM };

/** The platform of an image (an image without `arch`, as in unit tests, is x86_64). */
export function platformOf(image: Pick<GuestImage, 'arch'>): GuestPlatform {
  const arch = image.arch ?? 'x86_64';
  const p = GUEST_PLATFORMS[arch];
  if (!p) throw new Error(`image.arch ${JSON.stringify(arch)} has no guest platform (known: ${Object.keys(GUEST_PLATFORMS).join(', ')})`);
  return p;
}

function requireRoot(image: GuestImage): NonNullable<GuestImage['root']> {
  if (!image.root) throw new Error(`the ${image.arch} image has no root (image.root): findGuestImage('${image.arch}') adds it from scripts/install-arm64-root.sh`);
  return image.root;
}
