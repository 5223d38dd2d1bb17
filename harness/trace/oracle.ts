/**
 * What QEMU must ask of iommufd for one vfio-pci device, from the vIOMMU
 * config and the device's IOMMU_GET_HW_INFO. Tests assert trace == oracle.
 *
 * Read from QEMU's source (search corpus copies of qemu/qemu and the patch
 * series as posted; see the commits that last changed this file) and checked
 * against QEMU 11.1.3's real traces in tests/fixtures/trace/:
 *
 * - hw/vfio/iommufd.c iommufd_cdev_autodomains_get: first try every HWPT of
 *   the container (an attach failing with EINVAL moves on; the first success
 *   is reused, no alloc line); else get the hw info and
 *     if (hw_caps & IOMMU_HW_CAP_DIRTY_TRACKING)
 *         if (!want_nesting || want_nesting_dirty) flags |= DIRTY_TRACKING;
 *     if (want_nesting) flags |= NEST_PARENT;
 *     if (max_pasid_log2 && want_pasid_attach) flags |= PASID;
 *   then alloc_hwpt(dev_id, pt_id = the container's IOAS, flags, type 0, len 0)
 *   and attach pasid 0. The 11.1.3 binary carries the helpers
 *   vfio_device_get_viommu_flags_want_{nesting,nesting_dirty,pasid_attach}.
 * - iommufd_cdev_attach: a device first tries every existing container of its
 *   address space; any error there but the EINVAL above (an attach refused
 *   otherwise, or the alloc_hwpt in that container failing) is traced as
 *   iommufd_cdev_fail_attach_existing_container(msg) and QEMU allocates a new
 *   IOAS and tries again: a second alloc_hwpt with the same flags.
 * - intel-iommu's vIOMMU flags (hw/i386/intel_iommu.c vtd_get_viommu_flags):
 *   upstream's first form is `flags = s->fsts ? WANT_NESTING_PARENT : 0`; the
 *   PASID series ("Expose flag VIOMMU_FLAG_PASID_SUPPORTED and
 *   VIOMMU_FLAG_WANT_PASID_ATTACH") adds the PASID bits. 11.1.3's traces:
 *   fsts=on,pasid-bits=20 asks 0x9 of a PASID device, fsts=on,pasid-bits=0
 *   asks 0x1 of the same device, fsts=off,pasid-bits=20 asks 0x0 and
 *   synthesizes no PASID capability. So in 11.1.3 every vIOMMU flag hangs on
 *   fsts: off → 0; on → 0x5 (nesting parent, nesting dirty), plus
 *   PASID_SUPPORTED|WANT_PASID_ATTACH (0xf) with pasid-bits > 0. One upstream
 *   form reads `flags |= pasid ? PASID_SUPPORTED : 0` whatever fsts: a build
 *   doing that synthesizes a PASID capability under fsts=off
 *   (OracleOptions.vtdPasidSupportedWithoutFsts).
 * - hw/vfio/pci.c vfio_pci_synthesize_pasid_cap, called from
 *   vfio_add_ext_cap when the device's own PASID capability was not copied
 *   (Linux vfio hides it): returns unless hiodc->get_pasid_info() gives the
 *   device's PASID info (max_pasid_log2 > 0) AND
 *   pci_device_get_viommu_flags(pdev) & VIOMMU_FLAG_PASID_SUPPORTED. It runs
 *   after pci_device_set_iommu_device (vfio_pci_realize), so an SMMUv3 with
 *   ssidsize=auto has read the host SSIDSIZE by then.
 * - hw/arm/smmuv3-accel.c: get_viommu_flags = WANT_NESTING_PARENT, plus
 *   PASID_SUPPORTED when s->ssidsize; never nesting dirty nor PASID attach,
 *   so the parent is exactly NEST_PARENT (0x1) whatever the host offers.
 *   smmuv3_accel_set_iommu_device (the first device of a vSMMU) calls
 *   smmuv3_accel_alloc_viommu: alloc_viommu(type ARM_SMMUV3, hwpt_id = the
 *   device's parent HWPT), then the abort HWPT, then the bypass HWPT, both
 *   alloc_hwpt(pt_id = the vIOMMU id, flags 0, IOMMU_HWPT_DATA_ARM_SMMUV3,
 *   16 bytes), then attaches the device to the one GBPA.ABORT names (bypass
 *   after reset), then traces smmuv3_accel_set_iommu_device. With the guest:
 *   per STE install a vdevice (virt_id = the vSID) on the vIOMMU, the
 *   abort/bypass HWPT or a nested one (alloc_hwpt pt_id = the vIOMMU, type 2)
 *   attached, smmuv3_accel_install_ste type=abort|bypass|translate; a vEVENTQ
 *   when the guest enables its event queue.
 */
import { decodeSmmuIdr, type HwInfo } from '../host/hwinfo.js';
import { HWPT_ALLOC_FLAGS as F, HWPT_DATA_TYPES, HW_CAPS, VIOMMU_FLAGS as V, VIOMMU_TYPES, formatHwptFlags, hwptFlagNames, viommuFlagNames } from './flags.js';
import type { HwptRole } from './model.js';

export interface ViommuConfig {
  kind: 'none' | 'intel-iommu' | 'arm-smmuv3';
  /** intel-iommu first-stage translation (`fsts`, older `x-flts`). */
  fsts?: boolean;
  /** intel-iommu `pasid-bits` (0 = off). */
  pasidBits?: number;
  /** arm-smmuv3 `accel`. */
  accel?: boolean;
  /** arm-smmuv3 `ssidsize` (0 = no PASID) or `auto`. */
  ssidsize?: number | 'auto';
}

export interface HostCaps {
  /** IOMMU_HW_CAP_DIRTY_TRACKING in the device's hw info. */
  dirtyTracking: boolean;
  /** out_max_pasid_log2 of the device's hw info (0 = no PASID). */
  maxPasidLog2: number;
  /** For arm-smmuv3 ssidsize=auto: whether the host SMMU reports an SSIDSIZE (IDR1.SSIDSIZE > 0). */
  smmuSsid?: boolean;
}

/** The oracle's host capabilities from a device's IOMMU_GET_HW_INFO (harness/host/hwinfo.ts). */
export function hostCapsOf(hw: Pick<HwInfo, 'outCapabilities' | 'outMaxPasidLog2' | 'smmuv3'>): HostCaps {
  const caps: HostCaps = { dirtyTracking: (hw.outCapabilities & HW_CAPS.DIRTY_TRACKING) !== 0, maxPasidLog2: hw.outMaxPasidLog2 };
  if (hw.smmuv3) caps.smmuSsid = decodeSmmuIdr(hw.smmuv3.idr).ssidSize > 0;
  return caps;
}

export interface HwptRequest {
  flags: number;
  flagNames: string[];
  hwptType: number;
  len: number;
  /** What pt_id names: the container's IOAS, the parent HWPT, or the vIOMMU. */
  ptId: 'ioas' | 'parent' | 'viommu';
  /** The role the model gives the HWPT (harness/trace/model.ts HwptRole). */
  role: HwptRole;
  /** Why these flags, short: "fsts wants a nesting parent, the device has PASID (max_pasid_log2=20)". */
  because: string;
}

/** arm-smmuv3 accel=on: the vIOMMU and its HWPTs, in the order QEMU makes them. */
export interface SmmuExpectation {
  viommuType: number;
  /** Only the vSMMU's first device allocates the vIOMMU and its abort/bypass HWPTs; later ones reuse them. */
  allocatesViommu: boolean;
  /** alloc_viommu(type 1, hwpt_id = the parent HWPT). */
  viommu: { type: number; hwptId: 'parent' };
  abort: HwptRequest;
  bypass: HwptRequest;
  /** Kept for older callers: the abort request (abort and bypass are asked alike). */
  bypassAbort: HwptRequest;
  /** After the vIOMMU: the device re-attached (pasid 0) to the HWPT GBPA.ABORT names: bypass after reset. */
  reattach: 'bypass' | 'abort';
  /** The steps, in order, as words (for messages). */
  order: string[];
  /** Per translate STE the guest installs: alloc_hwpt on the vIOMMU, flags 0, type 2, len 16. */
  nested: HwptRequest;
  perSte: string;
  /** vdevice: alloc_vdev(viommu_id = the vIOMMU, virt_id = the vSID) on the first STE install for the device. */
  vdevice: string;
  veventq: string;
}

export interface HwptExpectation {
  /** The vIOMMU flags QEMU's vfio core sees when it allocates this device's HWPT. */
  viommuFlags: number;
  viommuFlagNames: string[];
  /** The vIOMMU flags once set_iommu_device ran (differs only for arm-smmuv3 ssidsize=auto's first device). */
  viommuFlagsAfterSetIommuDevice: number;
  /** False when the device reuses an existing HWPT: then no alloc line appears, only an attach. */
  allocates: boolean;
  /** True when the device may reuse an existing HWPT (OracleOptions.existingContainer): no request is then also right. */
  mayReuse: boolean;
  /**
   * Most HWPT requests on an IOAS this device may make: 1 in a new container;
   * 2 in an existing one (a refusal there makes QEMU retry in a new IOAS with the same flags).
   */
  maxRequests: number;
  /** The parent (or only) HWPT request; null when an existing HWPT is reused. */
  parent: HwptRequest | null;
  /** VT-d's nested stage-1 HWPT, allocated once the guest programs a first-stage PASID entry. */
  nested: (HwptRequest & { when: string }) | null;
  /** arm-smmuv3 accel=on: the vIOMMU and its extra HWPTs. */
  smmu: SmmuExpectation | null;
  /** The attach that follows (PASID 0, i.e. the device's RID). */
  attach: { pasid: number };
  /** Whether vfio-pci synthesizes a PCIe PASID capability for the guest (trace vfio_pci_synthesize_pasid_cap). */
  synthesizesPasidCap: boolean;
  /** Why, naming hw/vfio/pci.c's condition. */
  pasidCapWhy: string;
  /** Why, in words: printed in test names and failure messages. */
  explanation: string;
}

export interface OracleOptions {
  /** The container already has an HWPT this device can attach to (first attach not failing with EINVAL). */
  reusesExistingHwpt?: boolean;
  /**
   * The device's address space already has a container (a second device
   * without vIOMMU, or under SMMUv3 accel's shared system address space):
   * QEMU may reuse an HWPT (no request), allocate in that IOAS, or, refused
   * there, retry in a new IOAS: 0, 1 or 2 requests, all with the same flags.
   */
  existingContainer?: boolean;
  /** arm-smmuv3: this device is the vSMMU's first (default true). */
  firstDevice?: boolean;
  /** A QEMU whose intel-iommu sets PASID_SUPPORTED from pasid-bits whatever fsts (one upstream form; not 11.1.3). */
  vtdPasidSupportedWithoutFsts?: boolean;
  /**
   * Another vfio-pci device (same iommufd) was realized before this one: sets
   * existingContainer where the two share an address space
   * (sharesAddressSpace), and firstDevice=false.
   */
  secondDevice?: boolean;
}

/**
 * Whether vfio-pci devices under this vIOMMU share one address space, hence
 * one container: without a vIOMMU (system memory); intel-iommu fsts=on
 * ("Stick to system MR for IOMMUFD backed host device when x-flts=on");
 * arm-smmuv3 accel (shared_as_sysmem). intel-iommu fsts=off gives each device
 * its own VT-d address space (the virtual lab's two devices got an IOAS each).
 */
export function sharesAddressSpace(v: ViommuConfig): boolean {
  if (v.kind === 'none') return true;
  if (v.kind === 'intel-iommu') return Boolean(v.fsts);
  return Boolean(v.accel);
}

/** The vIOMMU's VIOMMU_FLAG_* bits, as QEMU computes them (see the file comment). */
export function viommuFlags(v: ViommuConfig, host: HostCaps, opts: OracleOptions = {}): { flags: number; why: string; afterSetIommuDevice: number } {
  const same = (flags: number, why: string) => ({ flags, why, afterSetIommuDevice: flags });
  switch (v.kind) {
    case 'none':
      return same(0, 'no vIOMMU: no vIOMMU flags');
    case 'intel-iommu': {
      const pasid = (v.pasidBits ?? 0) > 0;
      if (!v.fsts) {
        if (pasid && opts.vtdPasidSupportedWithoutFsts) {
          return same(V.PASID_SUPPORTED, `intel-iommu fsts=off, pasid-bits=${v.pasidBits}: PASID_SUPPORTED only (this QEMU sets it from pasid-bits alone)`);
        }
        return same(0, `intel-iommu fsts=off${pasid ? `, pasid-bits=${v.pasidBits}` : ''}: vIOMMU flags 0 (vtd_get_viommu_flags: every flag hangs on fsts in 11.1.3)`);
      }
      if (!pasid) return same(V.WANT_NESTING_PARENT | V.WANT_NESTING_DIRTY_TRACKING, 'intel-iommu fsts=on, pasid-bits=0: vIOMMU flags 0x5 (vtd_get_viommu_flags: fsts → nesting parent and nesting dirty tracking)');
      return same(
        V.WANT_NESTING_PARENT | V.PASID_SUPPORTED | V.WANT_NESTING_DIRTY_TRACKING | V.WANT_PASID_ATTACH,
        `intel-iommu fsts=on, pasid-bits=${v.pasidBits}: vIOMMU flags 0xf (vtd_get_viommu_flags: fsts → nesting parent and nesting dirty tracking; pasid-bits > 0 adds PASID_SUPPORTED and WANT_PASID_ATTACH)`,
      );
    }
    case 'arm-smmuv3': {
      if (!v.accel) return same(0, 'arm-smmuv3 accel=off: no vIOMMU flags (emulated SMMU, no host HWPT wishes)');
      const ssid = v.ssidsize ?? 'auto';
      const hostSsid = Boolean(host.smmuSsid);
      const first = opts.firstDevice ?? true;
      if (ssid === 'auto') {
        const resolved = V.WANT_NESTING_PARENT | (hostSsid ? V.PASID_SUPPORTED : 0);
        // s->ssidsize is read from the host only in the first device's set_iommu_device, after its alloc.
        const atAlloc = first ? V.WANT_NESTING_PARENT : resolved;
        return {
          flags: atAlloc,
          afterSetIommuDevice: resolved,
          why: `arm-smmuv3 accel=on, ssidsize=auto, host SSIDSIZE ${hostSsid ? 'present' : 'absent'}: vIOMMU flags 0x${atAlloc.toString(16)} at this device's alloc${first ? ' (the first device allocates before set_iommu_device reads the host SSIDSIZE)' : ''}, 0x${resolved.toString(16)} (${viommuFlagNames(resolved).join('|')}) after`,
        };
      }
      return ssid > 0
        ? same(V.WANT_NESTING_PARENT | V.PASID_SUPPORTED, `arm-smmuv3 accel=on, ssidsize=${ssid}: vIOMMU flags 0x3`)
        : same(V.WANT_NESTING_PARENT, `arm-smmuv3 accel=on, ssidsize=${ssid}: vIOMMU flags 0x1`);
    }
  }
}

function request(flags: number, hwptType: number, len: number, ptId: HwptRequest['ptId'], role: HwptRole, because: string): HwptRequest {
  return { flags, flagNames: hwptFlagNames(flags), hwptType, len, ptId, role, because };
}

/** Who asks for the nesting parent, in the words of the short reason. */
function nestingAsker(v: ViommuConfig): string {
  return v.kind === 'intel-iommu' ? 'fsts wants a nesting parent' : 'arm-smmuv3 accel wants a nesting parent';
}

/** The expectation for one vfio-pci device attaching to its container. */
export function expectHwpt(v: ViommuConfig, host: HostCaps, options: OracleOptions = {}): HwptExpectation {
  const opts: OracleOptions = { ...options };
  if (opts.secondDevice) {
    opts.firstDevice ??= false;
    opts.existingContainer ??= sharesAddressSpace(v);
  }
  const vf = viommuFlags(v, host, opts);
  const why: string[] = [vf.why + ` (${viommuFlagNames(vf.flags).join('|') || 'none'})`];
  const because: string[] = [];
  const wantsParent = (vf.flags & V.WANT_NESTING_PARENT) !== 0;
  const wantsNestDirty = (vf.flags & V.WANT_NESTING_DIRTY_TRACKING) !== 0;
  const wantsPasid = (vf.flags & V.WANT_PASID_ATTACH) !== 0;

  let flags = 0;
  if (wantsParent) {
    flags |= F.NEST_PARENT;
    why.push('NEST_PARENT: the vIOMMU wants a nesting parent (iommufd_cdev_autodomains_get: want_nesting)');
    because.push(nestingAsker(v));
  }
  if (host.dirtyTracking && !(wantsParent && !wantsNestDirty)) {
    flags |= F.DIRTY_TRACKING;
    why.push('DIRTY_TRACKING: the host reports IOMMU_HW_CAP_DIRTY_TRACKING (autodomains_get: hw_caps & DIRTY, and no nesting parent or nesting dirty wanted)');
    because.push('the host has dirty tracking');
  } else if (host.dirtyTracking) {
    why.push('no DIRTY_TRACKING: the vIOMMU wants a nesting parent without nesting dirty tracking');
    because.push('no dirty tracking: the vIOMMU wants a nesting parent without nesting dirty tracking');
  } else {
    why.push('no DIRTY_TRACKING: the host lacks IOMMU_HW_CAP_DIRTY_TRACKING');
  }
  if (wantsPasid && host.maxPasidLog2 !== 0) {
    flags |= F.PASID;
    why.push(`PASID: the vIOMMU wants PASID attach and max_pasid_log2=${host.maxPasidLog2} (autodomains_get: max_pasid_log2 && want_pasid_attach)`);
    because.push(`the device has PASID (max_pasid_log2=${host.maxPasidLog2})`);
  } else if (wantsPasid) {
    why.push('no PASID: the vIOMMU wants PASID attach but max_pasid_log2=0');
  } else if (host.maxPasidLog2 !== 0) {
    why.push(`no PASID: the device has PASID (max_pasid_log2=${host.maxPasidLog2}) but the vIOMMU does not want PASID attach`);
    because.push(`no PASID: the device has it (max_pasid_log2=${host.maxPasidLog2}) but the vIOMMU wants no PASID attach`);
  }
  if (because.length === 0) because.push(`no vIOMMU wish for nesting or PASID${host.dirtyTracking ? '' : ', the host has no dirty tracking'}`);

  let nested: HwptExpectation['nested'] = null;
  if (v.kind === 'intel-iommu' && v.fsts) {
    const nf = v.pasidBits ? F.PASID : 0;
    nested = {
      ...request(nf, HWPT_DATA_TYPES.VTD_S1, 24, 'parent', 'nested', v.pasidBits ? 'pasid-bits > 0: the stage-1 HWPT is PASID-capable' : 'a stage-1 HWPT takes no flag but PASID'),
      when: 'once the guest programs a first-stage PASID entry',
    };
    why.push(`nested stage-1 HWPT ${nested.when}: flags=${formatHwptFlags(nf)}, hwpt_type=1 (VTD_S1), len=24, pt_id=parent`);
  }

  let smmu: SmmuExpectation | null = null;
  if (v.kind === 'arm-smmuv3' && v.accel) {
    const first = opts.firstDevice ?? true;
    const s2 = (role: HwptRole, b: string) => request(0, HWPT_DATA_TYPES.ARM_SMMUV3, 16, 'viommu', role, b);
    const abort = s2('abort', 'smmuv3_accel_alloc_viommu pre-allocates the abort STE HWPT on the vIOMMU');
    smmu = {
      viommuType: VIOMMU_TYPES.ARM_SMMUV3,
      allocatesViommu: first,
      viommu: { type: VIOMMU_TYPES.ARM_SMMUV3, hwptId: 'parent' },
      abort,
      bypass: s2('bypass', 'smmuv3_accel_alloc_viommu pre-allocates the bypass STE HWPT on the vIOMMU, after the abort one'),
      bypassAbort: abort,
      reattach: 'bypass',
      order: [
        'alloc_hwpt parent (pt_id=IOAS, flags 0x1)',
        'attach pasid 0 to the parent',
        'alloc_viommu type=1 (ARM_SMMUV3) hwpt_id=the parent',
        'alloc_hwpt abort (pt_id=the vIOMMU, flags 0x0, hwpt_type=2, len=16)',
        'alloc_hwpt bypass (pt_id=the vIOMMU, flags 0x0, hwpt_type=2, len=16)',
        'attach pasid 0 to the bypass HWPT (GBPA.ABORT=0 after reset)',
        'smmuv3_accel_set_iommu_device',
      ],
      nested: s2('nested', 'a translate STE: the guest stage 1 nested on the vIOMMU'),
      perSte: 'per guest STE install: a vdevice (once per device), then the abort/bypass HWPT or a nested HWPT (hwpt_type=2, pt_id = the vIOMMU) attached, and smmuv3_accel_install_ste',
      vdevice: 'alloc_vdev(viommu_id = the vIOMMU, virt_id = the vSID) at the device\'s first STE install',
      veventq: 'a vEVENTQ on the vIOMMU once the guest enables its event queue',
    };
    why.push(
      first
        ? 'arm-smmuv3 accel: alloc_viommu type 1 on the parent; then abort and bypass HWPTs flags=0x0, hwpt_type=2, len=16, pt_id = the vIOMMU (abort first); then the device re-attached to the bypass HWPT; ' + smmu.perSte
        : 'arm-smmuv3 accel: a later device of the vSMMU reuses its vIOMMU and abort/bypass HWPTs (no alloc_viommu)',
    );
  }

  const afterFlags = vf.afterSetIommuDevice;
  const synthesizes = v.kind !== 'none' && (afterFlags & V.PASID_SUPPORTED) !== 0 && host.maxPasidLog2 > 0;
  const pasidCapWhy =
    'hw/vfio/pci.c vfio_pci_synthesize_pasid_cap: needs get_pasid_info (the device\'s max_pasid_log2 > 0) and the vIOMMU flag PASID_SUPPORTED: ' +
    `max_pasid_log2=${host.maxPasidLog2}, vIOMMU flags 0x${afterFlags.toString(16)} (${viommuFlagNames(afterFlags).join('|') || 'none'}) → ` +
    (synthesizes ? 'a PASID capability is synthesized' : 'none synthesized');
  why.push(pasidCapWhy);

  const reuse = Boolean(opts.reusesExistingHwpt);
  const existing = Boolean(opts.existingContainer) && !reuse;
  const allocates = !reuse;
  let head: string;
  if (reuse) {
    head = 'expect no alloc_hwpt line: the container already has an HWPT this device attaches to (first attach not failing with EINVAL); only an attach with pasid 0';
  } else {
    head = `expect alloc_hwpt(pt_id=IOAS, flags=${formatHwptFlags(flags)}, hwpt_type=0, len=0), then attach pasid 0`;
    if (existing) {
      head +=
        '; in an existing container QEMU may instead reuse an HWPT (no request), and after a refusal there (iommufd_cdev_fail_attach_existing_container) retry in a new IOAS with the same flags';
    }
  }
  return {
    viommuFlags: vf.flags,
    viommuFlagNames: viommuFlagNames(vf.flags),
    viommuFlagsAfterSetIommuDevice: afterFlags,
    allocates,
    mayReuse: reuse || existing,
    maxRequests: reuse ? 0 : existing ? 2 : 1,
    parent: allocates ? request(flags, 0, 0, 'ioas', 'parent', because.join(', ')) : null,
    nested,
    smmu,
    attach: { pasid: 0 },
    synthesizesPasidCap: synthesizes,
    pasidCapWhy,
    explanation: [head, ...why.map((w) => `- ${w}`)].join('\n'),
  };
}

/**
 * The failure line a test prints when QEMU asked other flags than the
 * oracle's: what QEMU asked, what the oracle requires, and why, e.g.
 * `dev_id 1: requested 0x0 (none), expected 0x9 (NEST_PARENT|PASID): fsts wants a nesting parent, the device has PASID (max_pasid_log2=20)`.
 */
export function describeMismatch(exp: HwptExpectation, requested: readonly number[], who = 'the device'): string {
  const asked = requested.length ? requested.map(formatHwptFlags).join(', then ') : 'nothing (no alloc_hwpt line)';
  if (!exp.parent) return `${who}: requested ${asked}, expected no request: ${exp.explanation.split('\n')[0]!.replace(/^expect /, '')}`;
  return `${who}: requested ${asked}, expected ${formatHwptFlags(exp.parent.flags)}: ${exp.parent.because}`;
}

/**
 * What the trace shows when realize fails AFTER the HWPT was allocated and
 * attached (a check in pci_device_set_iommu_device: the bridge check,
 * caching-mode, aw-bits, PASID bits, an SMMUv3 vIOMMU the kernel refuses):
 * vfio_pci_realize goes to out_teardown and detaches nothing itself.
 * - device_add (hot-plug): system/qdev-monitor.c qdev_device_add_from_qdict
 *   unparents and unrefs the device on the realize error (err_del_dev), so
 *   its finalize (vfio_pci_put_device → vfio_device_detach) detaches pasid 0
 *   and frees its HWPT and IOAS before the QMP error is returned.
 * - -device (cold-plug): a live run settled what the source left open. In
 *   the virtual lab, 11.1.3 refused a vfio-pci without caching-mode after the
 *   alloc and the attach and exited 1 with no detach and no free in its trace
 *   (tests/fixtures/trace/l1/vtd-no-caching-mode-cold-plug-refused.log), as
 *   the arm64 capture whose alloc_viommu the kernel refused does
 *   (tests/fixtures/trace/arm64/l2-accel-no-iort-override.trace): the kernel
 *   releases the objects when QEMU's iommufd closes at exit.
 */
export interface RealizeFailureExpectation {
  hotplug: boolean;
  /** The HWPT request succeeded and the device was attached before the failing check. */
  allocatedAndAttached: true;
  /** Detach and frees of the device's HWPT and IOAS follow. */
  detachesAndFrees: boolean;
  explanation: string;
}

export function expectRealizeFailureAfterAlloc(opts: { hotplug: boolean }): RealizeFailureExpectation {
  const how = opts.hotplug ? 'device_add' : '-device';
  return {
    hotplug: opts.hotplug,
    allocatedAndAttached: true,
    detachesAndFrees: opts.hotplug,
    explanation: opts.hotplug
      ? `${how}: qdev_device_add_from_qdict unparents and unrefs the device whose realize failed, and its finalize ` +
        '(vfio_pci_put_device → vfio_device_detach) detaches pasid 0, frees its HWPT, frees its IOAS'
      : `${how}: QEMU exits 1 without tracing a detach or a free (seen with 11.1.3 in the virtual lab); the kernel releases the objects as QEMU's fds close`,
  };
}
