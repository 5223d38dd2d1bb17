import type { DeviceProperty } from '../qmp/client.js';
import type { PropValue } from '../qemu/argv.js';

/**
 * vIOMMU features by what they mean, not by what one QEMU calls them. Names
 * moved between releases (facts sheet §1): QEMU 11.1 says `fsts`,
 * `scalable-mode`, `pasid-bits`; 10.0 says `x-flts`, `x-scalable-mode`,
 * `x-pasid-mode` (a bool). Each feature lists its spellings, newest first, and
 * how a value converts to each.
 */
export interface Spelling {
  property: string;
  /** From the feature's value to this property's value. */
  convert?: (v: PropValue) => PropValue;
  note?: string;
  /** The conversion loses information (a width becomes a bool): no use where the exact value matters. */
  lossy?: boolean;
}

export interface FeatureSpec {
  description: string;
  spellings: Spelling[];
  /** The values a config may give (checked when a config loads); absent: any string, number or boolean. */
  values?: { accepts(v: PropValue): boolean; says: string };
}

/** QEMU's OnOffAuto, as a config may write it (a bool is on/off). */
const ON_OFF_AUTO = { accepts: (v: PropValue) => typeof v === 'boolean' || v === 'on' || v === 'off' || v === 'auto', says: 'on, off, auto or a boolean' };
/** A number from a list, or "auto" (arm-smmuv3's OasMode, SsidSizeMode). */
const numberOrAuto = (ok: (n: number) => boolean, says: string) => ({
  accepts: (v: PropValue) => v === 'auto' || (typeof v === 'number' && Number.isInteger(v) && ok(v)),
  says: `${says} or "auto"`,
});

const same = (p: string): Spelling => ({ property: p });
const bitsAsBool = (p: string): Spelling => ({
  property: p,
  convert: (v) => Number(v) > 0,
  lossy: true,
  note: `${p} is a bool: any width > 0 turns PASID on with this QEMU's fixed width`,
});

export const INTEL_IOMMU_FEATURES: Record<string, FeatureSpec> = {
  scalableMode: { description: 'scalable mode', spellings: [same('scalable-mode'), same('x-scalable-mode')] },
  fsts: { description: 'first-stage translation', spellings: [same('fsts'), same('x-flts'), same('flts')] },
  pasidBits: { description: 'PASID support (width in bits)', spellings: [same('pasid-bits'), bitsAsBool('x-pasid-mode'), bitsAsBool('pasid')] },
  cachingMode: { description: 'caching mode (needed for device assignment)', spellings: [same('caching-mode')] },
  deviceIotlb: { description: 'device IOTLB (ATS)', spellings: [same('device-iotlb')] },
  awBits: { description: 'address width', spellings: [same('aw-bits')] },
  intremap: { description: 'interrupt remapping', spellings: [same('intremap')] },
  eim: { description: 'extended interrupt mode', spellings: [same('eim')] },
  svm: { description: 'shared virtual memory', spellings: [same('svm')] },
  dmaTranslation: { description: 'DMA translation', spellings: [same('dma-translation')] },
};

export const ARM_SMMUV3_FEATURES: Record<string, FeatureSpec> = {
  accel: { description: 'hardware-accelerated nested translation', spellings: [same('accel')] },
  ssidsize: {
    description: 'substream ID (PASID) width',
    spellings: [same('ssidsize')],
    values: numberOrAuto((n) => n >= 0 && n <= 20, 'a whole number of bits from 0 to 20'),
  },
  ats: { description: 'ATS', spellings: [same('ats')], values: ON_OFF_AUTO },
  ril: { description: 'range invalidation', spellings: [same('ril')], values: ON_OFF_AUTO },
  oas: { description: 'output address size', spellings: [same('oas')], values: numberOrAuto((n) => n === 44 || n === 48, '44 or 48') },
  stage: { description: 'translation stage', spellings: [same('stage')] },
  cmdqv: { description: 'Tegra241 CMDQV', spellings: [same('cmdqv')], values: ON_OFF_AUTO },
  primaryBus: { description: 'the PCI bus it translates for', spellings: [same('primary-bus')] },
};

export const FEATURES_BY_DRIVER: Record<string, Record<string, FeatureSpec>> = {
  'intel-iommu': INTEL_IOMMU_FEATURES,
  'arm-smmuv3': ARM_SMMUV3_FEATURES,
};

/** Which spelling of each feature a QEMU offers (undefined: none of them). */
export function featureNames(driver: string, props: readonly DeviceProperty[]): Record<string, string | undefined> {
  const have = new Set(props.map((p) => p.name));
  const specs = FEATURES_BY_DRIVER[driver] ?? {};
  return Object.fromEntries(Object.entries(specs).map(([f, s]) => [f, s.spellings.find((sp) => have.has(sp.property))?.property]));
}
