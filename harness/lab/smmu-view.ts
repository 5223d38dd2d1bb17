import type { ViommuConfig } from '../viommu/configs.js';

/**
 * What an L2 guest sees in the ID registers of QEMU's arm-smmuv3 accel=on,
 * from the config and the host SMMU's IDRs (IOMMU_GET_HW_INFO idr[]), per
 * QEMU's hw/arm/smmuv3.c and hw/arm/smmuv3-accel.c:
 * - smmuv3_init_id_regs: ATS 0, RIL 1, SSIDSIZE 0, OAS 44-bit (encoding 4);
 * - smmuv3_accel_idr_override: ril=off clears RIL, ats=on sets ATS,
 *   oas=48 sets OAS 48-bit, ssidsize=N (N > 0) sets SSIDSIZE N;
 * - smmuv3_accel_auto_finalise (first cold-plugged device): each `auto`
 *   property (unset is auto) takes the host's field: ATS from IDR0.ATS,
 *   RIL from IDR3.RIL, SSIDSIZE from IDR1.SSIDSIZE; OAS from IDR5.OAS
 *   capped at 48-bit, the most QEMU's model implements ("only implements
 *   auto, 44 bit, or 48 bit OAS"). The oas auto branch is newer than the
 *   source in the code corpus; 11.1.3's `-device arm-smmuv3,help` lists
 *   `oas=<OasMode> ... Defaults to auto`.
 * - smmuv3_accel_check_hw_compatible then refuses (QEMU does not start) a
 *   vSMMU field above the host's: SSIDSIZE, RIL, OAS, ATS.
 */
export interface VsmmuView {
  ats: boolean;
  ril: boolean;
  ssidBits: number;
  oasBits: number;
}

/** IDR5.OAS encodings (SMMUv3 spec; QEMU's smmuv3_oas_bits, Linux's arm_smmu_device_hw_probe). */
const OAS_BITS = [32, 36, 40, 42, 44, 48, 52] as const;
const OAS_44 = 4;
const OAS_48 = 5;

export const oasBitsOf = (field: number): number => OAS_BITS[field] ?? 48;

/** The host fields QEMU reads (SMMUv3 spec bit positions). */
export function hostSmmuFields(idr: number[]): { ats: number; ril: number; ssidSize: number; oas: number } {
  return {
    ats: ((idr[0] ?? 0) >>> 10) & 0x1,
    ssidSize: ((idr[1] ?? 0) >>> 6) & 0x1f,
    ril: ((idr[3] ?? 0) >>> 10) & 0x1,
    oas: (idr[5] ?? 0) & 0x7,
  };
}

const isAuto = (v: unknown): boolean => v === undefined || v === 'auto';
const onOff = (v: unknown): boolean | undefined => (v === true || v === 'on' ? true : v === false || v === 'off' ? false : undefined);

/** The guest-visible vSMMU fields, or why QEMU refuses the host (check_hw_compatible). */
export function vsmmuView(config: ViommuConfig, hostIdr: number[]): { ok: true; view: VsmmuView } | { ok: false; reason: string } {
  const f = config.viommu?.features ?? {};
  if (config.viommu?.driver !== 'arm-smmuv3' || f.accel !== true) throw new Error(`vsmmuView: ${config.name} is not arm-smmuv3 accel=on`);
  const host = hostSmmuFields(hostIdr);
  const ats = isAuto(f.ats) ? host.ats : onOff(f.ats) ? 1 : 0;
  const ril = isAuto(f.ril) ? host.ril : onOff(f.ril) === false ? 0 : 1;
  const ssidSize = isAuto(f.ssidsize) ? host.ssidSize : Number(f.ssidsize);
  const oas = isAuto(f.oas) ? Math.min(host.oas, OAS_48) : Number(f.oas) === 48 ? OAS_48 : OAS_44;
  const refused: string[] = [];
  if (host.ssidSize < ssidSize) refused.push(`SSIDSIZE host=${host.ssidSize} vSMMU=${ssidSize}`);
  if (host.ril < ril) refused.push('RIL');
  if (host.oas < oas) refused.push(`OAS host ${oasBitsOf(host.oas)}-bit, vSMMU ${oasBitsOf(oas)}-bit`);
  if (host.ats < ats) refused.push('ATS');
  if (refused.length) return { ok: false, reason: `the host SMMUv3 lacks what ${config.name} asks: ${refused.join(', ')}` };
  return { ok: true, view: { ats: ats === 1, ril: ril === 1, ssidBits: ssidSize, oasBits: oasBitsOf(oas) } };
}

/** Linux 7.2's ARM_SMMU_FEAT_* bits that a vSMMU field sets (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h). */
export const LINUX_SMMU_FEAT = { ATS: 1 << 5, RANGE_INV: 1 << 15 } as const;

/** arm_smmu_device_hw_probe's line: `arm-smmu-v3 NAME: oas 44-bit (features 0x...)`. */
export function parseSmmuProbeLines(dmesg: string): Array<{ device: string; oasBits: number; features: number; line: string }> {
  const out = [];
  for (const m of dmesg.matchAll(/arm-smmu-v3 (\S+): oas (\d+)-bit \(features (0x[0-9a-f]+)\)/g)) {
    out.push({ device: m[1]!, oasBits: Number(m[2]), features: Number(m[3]), line: m[0] });
  }
  return out;
}

/** What that line shows of a view: oas, and (CONFIG_PCI_ATS in the guest) the ATS and RANGE_INV feature bits. */
export function probeLineView(p: { oasBits: number; features: number }): Pick<VsmmuView, 'ats' | 'ril' | 'oasBits'> {
  return { ats: (p.features & LINUX_SMMU_FEAT.ATS) !== 0, ril: (p.features & LINUX_SMMU_FEAT.RANGE_INV) !== 0, oasBits: p.oasBits };
}
