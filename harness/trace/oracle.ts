/**
 * The HWPT flags QEMU must request, from the vIOMMU config and the host's
 * capabilities, per the facts sheet section 3 (QEMU 11.1.3's vfio/iommufd
 * logic). Tests assert trace == oracle.
 */
import { HWPT_ALLOC_FLAGS as F, HWPT_DATA_TYPES, VIOMMU_FLAGS as V, formatHwptFlags, hwptFlagNames, viommuFlagNames } from './flags.js';

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
  /** For arm-smmuv3 ssidsize=auto: whether the host SMMU reports an SSIDSIZE. */
  smmuSsid?: boolean;
}

export interface HwptRequest {
  flags: number;
  flagNames: string[];
  hwptType: number;
  len: number;
  /** What pt_id names: the container's IOAS, or the parent HWPT. */
  ptId: 'ioas' | 'parent';
}

export interface HwptExpectation {
  viommuFlags: number;
  viommuFlagNames: string[];
  /** False when the device reuses an existing HWPT: then no alloc line appears, only an attach. */
  allocates: boolean;
  /** The parent (or only) HWPT request; null when an existing HWPT is reused. */
  parent: HwptRequest | null;
  /** VT-d's nested stage-1 HWPT, allocated once the guest programs a first-stage PASID entry. */
  nested: (HwptRequest & { when: string }) | null;
  /** arm-smmuv3 accel=on: the vIOMMU and its extra HWPTs. */
  smmu: { viommuType: number; bypassAbort: HwptRequest; perSte: string } | null;
  /** The attach that follows (PASID 0, i.e. the device's RID). */
  attach: { pasid: number };
  /** Why, in words: printed in test names and failure messages. */
  explanation: string;
}

export interface OracleOptions {
  /** The container already has an HWPT this device can attach to (first attach not failing with EINVAL). */
  reusesExistingHwpt?: boolean;
}

/** The vIOMMU's VIOMMU_FLAG_* bits (facts section 3, "vIOMMU flags"). */
export function viommuFlags(v: ViommuConfig, host: HostCaps): { flags: number; why: string } {
  switch (v.kind) {
    case 'none':
      return { flags: 0, why: 'no vIOMMU: no vIOMMU flags' };
    case 'intel-iommu':
      if (!v.fsts) return { flags: 0, why: 'intel-iommu fsts=off: vIOMMU flags 0' };
      if (!v.pasidBits)
        return { flags: V.WANT_NESTING_PARENT | V.WANT_NESTING_DIRTY_TRACKING, why: 'intel-iommu fsts=on, pasid-bits=0: vIOMMU flags 0x5' };
      return { flags: V.WANT_NESTING_PARENT | V.PASID_SUPPORTED | V.WANT_NESTING_DIRTY_TRACKING | V.WANT_PASID_ATTACH, why: `intel-iommu fsts=on, pasid-bits=${v.pasidBits}: vIOMMU flags 0xf` };
    case 'arm-smmuv3': {
      if (!v.accel)
        return { flags: 0, why: 'arm-smmuv3 accel=off: no flags (not in the facts table; assumed like no vIOMMU)' };
      const ssid = v.ssidsize ?? 'auto';
      const pasid = ssid === 'auto' ? Boolean(host.smmuSsid) : ssid > 0;
      const how = ssid === 'auto' ? `ssidsize=auto, host SSIDSIZE ${host.smmuSsid ? 'present' : 'absent'}` : `ssidsize=${ssid}`;
      return pasid
        ? { flags: V.WANT_NESTING_PARENT | V.PASID_SUPPORTED, why: `arm-smmuv3 accel=on, ${how}: vIOMMU flags 0x3` }
        : { flags: V.WANT_NESTING_PARENT, why: `arm-smmuv3 accel=on, ${how}: vIOMMU flags 0x1` };
    }
  }
}

/** The expectation for one vfio-pci device attaching to its container. */
export function expectHwpt(v: ViommuConfig, host: HostCaps, opts: OracleOptions = {}): HwptExpectation {
  const vf = viommuFlags(v, host);
  const why: string[] = [vf.why + ` (${viommuFlagNames(vf.flags).join('|') || 'none'})`];
  const wantsParent = (vf.flags & V.WANT_NESTING_PARENT) !== 0;
  const wantsNestDirty = (vf.flags & V.WANT_NESTING_DIRTY_TRACKING) !== 0;
  const wantsPasid = (vf.flags & V.WANT_PASID_ATTACH) !== 0;

  let flags = 0;
  if (host.dirtyTracking && !(wantsParent && !wantsNestDirty)) {
    flags |= F.DIRTY_TRACKING;
    why.push('DIRTY_TRACKING: the host reports IOMMU_HW_CAP_DIRTY_TRACKING');
  } else if (host.dirtyTracking) {
    why.push('no DIRTY_TRACKING: the vIOMMU wants a nesting parent without nesting dirty tracking');
  } else {
    why.push('no DIRTY_TRACKING: the host lacks IOMMU_HW_CAP_DIRTY_TRACKING');
  }
  if (wantsParent) {
    flags |= F.NEST_PARENT;
    why.push('NEST_PARENT: the vIOMMU wants a nesting parent');
  }
  if (wantsPasid && host.maxPasidLog2 !== 0) {
    flags |= F.PASID;
    why.push(`PASID: the vIOMMU wants PASID attach and max_pasid_log2=${host.maxPasidLog2}`);
  } else if (wantsPasid) {
    why.push('no PASID: the vIOMMU wants PASID attach but max_pasid_log2=0');
  }

  const request = (f: number, hwptType: number, len: number, ptId: HwptRequest['ptId']): HwptRequest => ({
    flags: f, flagNames: hwptFlagNames(f), hwptType, len, ptId,
  });

  let nested: HwptExpectation['nested'] = null;
  if (v.kind === 'intel-iommu' && v.fsts) {
    const nf = v.pasidBits ? F.PASID : 0;
    nested = {
      ...request(nf, HWPT_DATA_TYPES.VTD_S1, 24, 'parent'),
      when: 'once the guest programs a first-stage PASID entry',
    };
    why.push(`nested stage-1 HWPT ${nested.when}: flags=${formatHwptFlags(nf)}, hwpt_type=1 (VTD_S1), len=24, pt_id=parent`);
  }
  let smmu: HwptExpectation['smmu'] = null;
  if (v.kind === 'arm-smmuv3' && v.accel) {
    smmu = {
      viommuType: 1,
      bypassAbort: request(0, HWPT_DATA_TYPES.ARM_SMMUV3, 16, 'parent'),
      perSte: 'per guest STE a vdevice and a nested HWPT with hwpt_type=2',
    };
    why.push('arm-smmuv3 accel: vIOMMU type 1 on the parent; abort and bypass HWPTs flags=0x0, hwpt_type=2, len=16; ' + smmu.perSte);
  }

  const allocates = !opts.reusesExistingHwpt;
  let head: string;
  if (allocates) {
    head = `expect alloc_hwpt(pt_id=IOAS, flags=${formatHwptFlags(flags)}, hwpt_type=0, len=0), then attach pasid 0`;
  } else {
    head = 'expect no alloc_hwpt line: the container already has an HWPT this device attaches to (first attach not failing with EINVAL); only an attach with pasid 0';
  }
  return {
    viommuFlags: vf.flags,
    viommuFlagNames: viommuFlagNames(vf.flags),
    allocates,
    parent: allocates ? request(flags, 0, 0, 'ioas') : null,
    nested,
    smmu,
    attach: { pasid: 0 },
    explanation: [head, ...why.map((w) => `- ${w}`)].join('\n'),
  };
}
