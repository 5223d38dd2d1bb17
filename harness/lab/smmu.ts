import type { ViommuConfig } from '../viommu/configs.js';

/**
 * What arm-smmuv3 accel=on does with its `auto` properties, read from
 * hw/arm/smmuv3-accel.c:
 * - smmuv3_accel_init sets auto_mode when ats, ril, ssidsize or oas is
 *   `auto` (their default), and then arms a machine-init-done notifier.
 *   cmdqv, `auto` by default too, does not: with every other property
 *   explicit QEMU 11.1.3 comes up with nothing plugged. The source in the
 *   code corpus predates oas=auto; the list was asked of 11.1.3 itself, one
 *   property left auto at a time (tests/lab/smmu-auto.test.ts), which found
 *   oas missing from it;
 * - the first cold-plugged vfio-pci device's set_iommu_device resolves them
 *   from the host SMMU's IDRs (smmuv3_accel_auto_finalise, from
 *   smmuv3_accel_check_hw_compatible), once, and a hot-plugged device reuses
 *   those values;
 * - smmuv3_accel_machine_done, when nothing resolved them, reports
 *   SMMU_AUTO_NEEDS_COLD_PLUG and calls exit(1): QEMU never reaches its
 *   monitor, so there is no machine to hot-plug into.
 */
export const SMMU_AUTO_PROPERTIES = ['ats', 'ril', 'ssidsize', 'oas'] as const;

export const SMMU_AUTO_NEEDS_COLD_PLUG = "arm-smmuv3 accel=on with 'auto' properties requires at least one cold-plugged VFIO device";

/** The config's arm-smmuv3 accel properties left `auto` (unset is auto); [] for anything but arm-smmuv3 accel=on. */
export function smmuAutoProperties(config: ViommuConfig): string[] {
  const v = config.viommu;
  if (v?.driver !== 'arm-smmuv3' || v.features.accel !== true) return [];
  return SMMU_AUTO_PROPERTIES.filter((p) => v.features[p] === undefined || v.features[p] === 'auto');
}
