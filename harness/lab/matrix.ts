import type { DeviceRole } from '../host/profile.js';

/**
 * The patch series' scenarios as data (kselftest FIXTURE_VARIANT style): a
 * vIOMMU config × the role of the passthrough device. tests/lab/matrix.test.ts
 * runs the same checks on every row; tests that judge a whole run (an older
 * QEMU as L2 must fail exactly the fsts=on rows) read the same rows.
 */
export interface MatrixRow {
  config: string;
  role: DeviceRole;
}

export const MATRIX: readonly MatrixRow[] = [
  { config: 'no-viommu-q35', role: 'no-pasid' },
  { config: 'no-viommu-q35', role: 'pasid' },
  { config: 'intel-iommu-scalable-pasid', role: 'pasid' },
  { config: 'intel-iommu-scalable-fsts', role: 'no-pasid' },
  { config: 'intel-iommu-scalable-fsts', role: 'pasid' },
  { config: 'intel-iommu-scalable-fsts-pasid', role: 'no-pasid' },
  { config: 'intel-iommu-scalable-fsts-pasid', role: 'pasid' },
  { config: 'arm-smmuv3-accel', role: 'no-pasid' },
  { config: 'arm-smmuv3-accel-ssid', role: 'pasid' },
  // No auto property: the one SMMUv3 accel config QEMU lets hot-plug a device with none cold-plugged.
  { config: 'arm-smmuv3-accel-explicit', role: 'no-pasid' },
];

/** The matrix's describe() titles, shared by the suite and by whoever reads its results. */
export const MATRIX_SUITE = 'series scenarios: vIOMMU config × device role';
export const rowTitle = (r: MatrixRow): string => `${r.config} × ${r.role} device`;
export const REQUESTS_TEST = 'QEMU requests the parent-HWPT flags the oracle computes from the config and the device’s hw info';
