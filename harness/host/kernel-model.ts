/**
 * What the host kernel answers to IOMMU_HWPT_ALLOC for a device, predicted
 * from the device's own IOMMU_GET_HW_INFO: the hardware's registers (VT-d
 * cap/ecap, SMMUv3 IDR/IIDR) and iommufd's capability bits. This is the
 * kernel half of the oracle: the lab tests take the flags QEMU must ask from
 * harness/trace/oracle.ts and the kernel's answer to them from here and from
 * asking the kernel directly, so the same test is right on a VT-d host with
 * nesting and dirty tracking, on an SMMUv3 host, and in the virtual lab.
 *
 * Read from Linux 7.2.13 (the kernel scripts/build-kernel.sh builds):
 * - drivers/iommu/iommufd/hw_pagetable.c iommufd_hwpt_paging_alloc: unknown
 *   flags, DIRTY_TRACKING without IOMMU_CAP_DIRTY_TRACKING, and
 *   FAULT_ID_VALID with NEST_PARENT are -EOPNOTSUPP before any driver runs;
 *   FAULT_ID_VALID is stripped before the driver sees the flags, and a
 *   fault_id that names no fault object is -ENOENT after the domain exists.
 * - drivers/iommu/intel/iommu.c intel_iommu_domain_alloc_paging_flags: first
 *   stage when flags ⊆ {PASID} and the IOMMU is in scalable mode with FLTS;
 *   else second stage, where NEST_PARENT needs ecap.NEST, DIRTY needs
 *   ecap.SLADS and SMPWC, and scalable mode needs SLTS.
 * - drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c
 *   arm_smmu_domain_alloc_paging_flags: `switch (flags)`: 0; NEST_PARENT
 *   alone (FEAT_NESTING: S1P and S2P, minus the MMU-600/700 errata); DIRTY,
 *   PASID or both (stage 1, S1P); anything else, e.g. NEST_PARENT|PASID, is
 *   -EOPNOTSUPP.
 */
import { HW_CAPS, HWPT_ALLOC_FLAGS as F, formatHwptFlags } from '../trace/flags.js';
import type { HwInfo } from './hwinfo.js';

export interface KernelAnswer {
  ok: boolean;
  /** The errno name when refused. */
  errno?: 'EOPNOTSUPP' | 'ENOENT';
  /** Which check decides, in words (the function and the register bit). */
  why: string;
}

const bit = (v: bigint, n: number): boolean => ((v >> BigInt(n)) & 1n) === 1n;

/** VT-d ecap bits the allocators read (drivers/iommu/intel/iommu.h). */
export function vtdFeatures(ecap: bigint) {
  const smts = bit(ecap, 43);
  return {
    scalableMode: smts,
    firstStage: smts && bit(ecap, 47),
    secondStage: !smts || bit(ecap, 46),
    nesting: smts && bit(ecap, 26),
    dirty: smts && bit(ecap, 45) && bit(ecap, 48),
  };
}

/** SMMUv3 features from IDR0/IIDR (arm_smmu_device_hw_probe, arm_smmu_device_iidr_probe). */
export function smmuFeatures(idr: readonly number[], iidr: number) {
  const idr0 = idr[0] ?? 0;
  const s1 = (idr0 & 0x2) !== 0;
  const s2 = (idr0 & 0x1) !== 0;
  const implementer = iidr & 0xfff;
  const variant = (iidr >>> 16) & 0xf;
  const revision = (iidr >>> 12) & 0xf;
  const product = (iidr >>> 20) & 0xfff;
  let erratum: string | undefined;
  if (implementer === 0x43b && product === 0x483 && variant < 2) erratum = 'Arm MMU-600 erratum 1209401';
  if (implementer === 0x43b && product === 0x487 && (variant < 1 || revision < 1)) erratum = 'Arm MMU-700 errata 2268618, 2812531';
  return { stage1: s1, stage2: s2, nesting: s1 && s2 && !erratum, ...(erratum ? { nestingErratum: erratum } : {}) };
}

/** Whether the device's IOMMU can be a nesting parent, and why (the doctor's and the tests' reason). */
export function nestingParent(hw: HwInfo): { ok: boolean; why: string } {
  if (hw.vtd) {
    const f = vtdFeatures(hw.vtd.ecapReg);
    return f.nesting
      ? { ok: true, why: 'VT-d ecap.NEST=1 in scalable mode' }
      : { ok: false, why: `VT-d ${f.scalableMode ? 'ecap.NEST=0' : 'not in scalable mode (ecap.SMTS=0)'}: no nesting parent` };
  }
  if (hw.smmuv3) {
    const f = smmuFeatures(hw.smmuv3.idr, hw.smmuv3.iidr);
    if (f.nesting) return { ok: true, why: 'SMMUv3 IDR0.S1P=1 and S2P=1' };
    return { ok: false, why: f.nestingErratum ? `SMMUv3 nesting disabled by ${f.nestingErratum}` : `SMMUv3 IDR0.S1P=${+f.stage1} S2P=${+f.stage2}: no nesting` };
  }
  return { ok: false, why: `IOMMU type ${hw.outDataTypeName}: the harness has no model of its nesting` };
}

/**
 * The kernel's answer to IOMMU_HWPT_ALLOC(flags) on an IOAS for this device,
 * with fault_id 0 when FAULT_ID_VALID is set (no fault object). Undefined for
 * an IOMMU type the model does not cover: then only the direct answer counts.
 */
export function predictHwptAlloc(hw: HwInfo, flags: number): KernelAnswer | undefined {
  const known = F.NEST_PARENT | F.DIRTY_TRACKING | F.FAULT_ID_VALID | F.PASID;
  const name = formatHwptFlags(flags);
  if (flags & ~known) return { ok: false, errno: 'EOPNOTSUPP', why: `${name}: unknown flag bits (iommufd_hwpt_paging_alloc)` };
  const dirtyCap = (hw.outCapabilities & HW_CAPS.DIRTY_TRACKING) !== 0;
  if (flags & F.DIRTY_TRACKING && !dirtyCap) return { ok: false, errno: 'EOPNOTSUPP', why: `${name}: the device's IOMMU lacks IOMMU_CAP_DIRTY_TRACKING (iommufd_hwpt_paging_alloc)` };
  if (flags & F.FAULT_ID_VALID && flags & F.NEST_PARENT) return { ok: false, errno: 'EOPNOTSUPP', why: `${name}: FAULT_ID_VALID with NEST_PARENT (iommufd_hwpt_paging_alloc)` };
  const driverFlags = flags & ~F.FAULT_ID_VALID;
  const driver = hw.vtd ? vtdAnswer(hw.vtd.ecapReg, driverFlags) : hw.smmuv3 ? smmuAnswer(hw.smmuv3.idr, hw.smmuv3.iidr, driverFlags) : undefined;
  if (!driver) return undefined;
  if (!driver.ok) return { ...driver, why: `${name}: ${driver.why}` };
  if (flags & F.FAULT_ID_VALID) return { ok: false, errno: 'ENOENT', why: `${name}: fault_id 0 names no fault object (iommufd_hwpt_alloc), after ${driver.why}` };
  return { ok: true, why: `${name}: ${driver.why}` };
}

function vtdAnswer(ecap: bigint, flags: number): KernelAnswer {
  const f = vtdFeatures(ecap);
  if ((flags & ~F.PASID) === 0 && f.firstStage) return { ok: true, why: 'VT-d first stage (scalable mode, ecap.FLTS=1)' };
  if (flags & F.NEST_PARENT && !f.nesting) return { ok: false, errno: 'EOPNOTSUPP', why: 'VT-d second stage refuses NEST_PARENT without nesting (ecap.NEST=0)' };
  if (flags & F.DIRTY_TRACKING && !f.dirty) return { ok: false, errno: 'EOPNOTSUPP', why: 'VT-d second stage refuses DIRTY_TRACKING without SSADS (ecap.SLADS/SMPWC)' };
  if (!f.secondStage) return { ok: false, errno: 'EOPNOTSUPP', why: 'VT-d in scalable mode without second-stage translation (ecap.SLTS=0)' };
  return { ok: true, why: 'VT-d second stage' };
}

function smmuAnswer(idr: readonly number[], iidr: number, flags: number): KernelAnswer {
  const f = smmuFeatures(idr, iidr);
  switch (flags) {
    case 0:
      return f.stage1 || f.stage2 ? { ok: true, why: `SMMUv3 stage ${f.stage1 ? 1 : 2} paging domain` } : { ok: false, errno: 'EOPNOTSUPP', why: 'SMMUv3 with neither stage' };
    case F.NEST_PARENT:
      return f.nesting
        ? { ok: true, why: 'SMMUv3 stage-2 nesting parent (S1P and S2P)' }
        : { ok: false, errno: 'EOPNOTSUPP', why: f.nestingErratum ? `SMMUv3 nesting disabled by ${f.nestingErratum}` : 'SMMUv3 without FEAT_NESTING (needs IDR0.S1P and S2P)' };
    case F.DIRTY_TRACKING:
    case F.DIRTY_TRACKING | F.PASID:
    case F.PASID:
      return f.stage1 ? { ok: true, why: 'SMMUv3 stage-1 domain' } : { ok: false, errno: 'EOPNOTSUPP', why: 'SMMUv3 without stage 1 (IDR0.S1P=0)' };
    default:
      return { ok: false, errno: 'EOPNOTSUPP', why: 'SMMUv3 takes NEST_PARENT only alone (arm_smmu_domain_alloc_paging_flags: no case for this combination)' };
  }
}
