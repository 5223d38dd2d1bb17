/**
 * The VT-d capability (CAP_REG, 0x08) and extended capability (ECAP_REG,
 * 0x10) registers as named fields. Bit positions follow the Linux 7.2
 * driver's accessors (drivers/iommu/intel/iommu.h, `cap_*` and `ecap_*`),
 * which follow the VT-d specification. The guest shows both registers in
 * /sys/class/iommu/dmarN/intel-iommu/{cap,ecap} as hex without 0x.
 */

export interface FieldDef {
  /** Short name as the spec and the driver abbreviate it. */
  name: string;
  lsb: number;
  width: number;
  what: string;
}

const f = (name: string, lsb: number, width: number, what: string): FieldDef => ({ name, lsb, width, what });

export const CAP_FIELDS: readonly FieldDef[] = [
  f('ND', 0, 3, 'number of domains supported (2^(4+2*ND))'),
  f('AFL', 3, 1, 'advanced fault logging'),
  f('RWBF', 4, 1, 'required write-buffer flushing'),
  f('PLMR', 5, 1, 'protected low-memory region'),
  f('PHMR', 6, 1, 'protected high-memory region'),
  f('CM', 7, 1, 'caching mode'),
  f('SAGAW', 8, 5, 'supported adjusted guest address widths (bit 1: 39-bit, bit 2: 48-bit, bit 3: 57-bit)'),
  f('MGAW', 16, 6, 'maximum guest address width - 1'),
  f('ZLR', 22, 1, 'zero-length read'),
  f('ISOCH', 23, 1, 'isochrony (deprecated)'),
  f('FRO', 24, 10, 'fault-recording register offset / 16'),
  f('SLLPS', 34, 4, 'second-stage large page sizes (bit 0: 2M, bit 1: 1G)'),
  f('PSI', 39, 1, 'page-selective invalidation'),
  f('NFR', 40, 8, 'number of fault-recording registers - 1'),
  f('MAMV', 48, 6, 'maximum address mask value'),
  f('DWD', 54, 1, 'write draining'),
  f('DRD', 55, 1, 'read draining'),
  f('FS1GP', 56, 1, 'first-stage 1-GByte pages'),
  f('PI', 59, 1, 'posted interrupts'),
  f('FS5LP', 60, 1, 'first-stage 5-level paging'),
  f('ECMDS', 61, 1, 'enhanced command'),
  f('ESIRTPS', 62, 1, 'enhanced set interrupt remap table pointer'),
  f('ESRTPS', 63, 1, 'enhanced set root table pointer'),
];

export const ECAP_FIELDS: readonly FieldDef[] = [
  f('C', 0, 1, 'page-walk coherency'),
  f('QI', 1, 1, 'queued invalidation'),
  f('DT', 2, 1, 'device TLB (ATS)'),
  f('IR', 3, 1, 'interrupt remapping'),
  f('EIM', 4, 1, 'extended interrupt mode (x2APIC)'),
  f('PT', 6, 1, 'pass through'),
  f('SC', 7, 1, 'snoop control'),
  f('IRO', 8, 10, 'IOTLB register offset / 16'),
  f('MHMV', 20, 4, 'maximum handle mask value'),
  f('MTS', 25, 1, 'memory type support'),
  f('NEST', 26, 1, 'nested translation'),
  f('PRS', 29, 1, 'page request'),
  f('ERS', 30, 1, 'execute request'),
  f('SRS', 31, 1, 'supervisor request'),
  f('NWFS', 33, 1, 'no write flag'),
  f('EAFS', 34, 1, 'extended accessed flag'),
  f('PSS', 35, 5, 'PASID size supported - 1'),
  f('PASID', 40, 1, 'process address space ID'),
  f('DIT', 41, 1, 'device-TLB invalidation throttle'),
  f('PDS', 42, 1, 'page-request drain'),
  f('SMTS', 43, 1, 'scalable-mode translation'),
  f('VCS', 44, 1, 'virtual command'),
  f('SLADS', 45, 1, 'second-stage accessed/dirty'),
  f('SLTS', 46, 1, 'second-stage translation (SSTS)'),
  f('FLTS', 47, 1, 'first-stage translation (FSTS)'),
  f('SMPWCS', 48, 1, 'scalable-mode page-walk coherency'),
  f('RPS', 49, 1, 'RID_PASID'),
  f('PMS', 51, 1, 'performance monitoring'),
];

export type Fields = Record<string, number>;

export interface DecodedRegister {
  raw: bigint;
  /** Every defined field by name (flags are 0/1). */
  fields: Fields;
  /** Names of the one-bit fields that are set, in bit order. */
  flags: string[];
  /** Bits set that no field defines (reserved in this table). */
  unknownBits: number[];
}

/** Parses the sysfs form ("d2008c40660462", hex without 0x, maybe a newline). */
export function parseHexRegister(text: string, what = 'register'): bigint {
  const t = text.trim().replace(/^0x/i, '');
  if (!/^[0-9a-f]{1,16}$/i.test(t)) throw new Error(`${what}: ${JSON.stringify(text)} is not a 64-bit hex value`);
  return BigInt(`0x${t}`);
}

export function decodeRegister(raw: bigint, table: readonly FieldDef[]): DecodedRegister {
  const fields: Fields = {};
  const flags: string[] = [];
  let known = 0n;
  for (const d of table) {
    const mask = (1n << BigInt(d.width)) - 1n;
    const v = Number((raw >> BigInt(d.lsb)) & mask);
    fields[d.name] = v;
    if (d.width === 1 && v) flags.push(d.name);
    known |= mask << BigInt(d.lsb);
  }
  const unknownBits: number[] = [];
  for (let b = 0; b < 64; b++) if ((raw >> BigInt(b)) & 1n && !((known >> BigInt(b)) & 1n)) unknownBits.push(b);
  return { raw, fields, flags, unknownBits };
}

/** The derived quantities tests care about, in plain words. */
export interface VtdSummary {
  cap: DecodedRegister;
  ecap: DecodedRegister;
  cachingMode: boolean;
  /** MGAW + 1. */
  maxGuestAddressWidth: number;
  /** Adjusted guest address widths from SAGAW (39, 48, 57). */
  agaws: number[];
  domains: number;
  scalableMode: boolean;
  firstStage: boolean;
  secondStage: boolean;
  nested: boolean;
  secondStageAccessedDirty: boolean;
  pasid: boolean;
  /** PSS + 1 when PASID is supported, else 0. */
  pasidBits: number;
  deviceTlb: boolean;
  interruptRemapping: boolean;
  extendedInterruptMode: boolean;
  passThrough: boolean;
  snoopControl: boolean;
  pageRequest: boolean;
  firstStage1G: boolean;
}

export function summarizeVtd(capRaw: bigint, ecapRaw: bigint): VtdSummary {
  const cap = decodeRegister(capRaw, CAP_FIELDS);
  const ecap = decodeRegister(ecapRaw, ECAP_FIELDS);
  const c = cap.fields;
  const e = ecap.fields;
  const agaws = [39, 48, 57].filter((_, i) => (c.SAGAW! >> (i + 1)) & 1);
  return {
    cap,
    ecap,
    cachingMode: c.CM === 1,
    maxGuestAddressWidth: c.MGAW! + 1,
    agaws,
    domains: 2 ** (4 + 2 * c.ND!),
    scalableMode: e.SMTS === 1,
    firstStage: e.FLTS === 1,
    secondStage: e.SLTS === 1,
    nested: e.NEST === 1,
    secondStageAccessedDirty: e.SLADS === 1,
    pasid: e.PASID === 1,
    pasidBits: e.PASID === 1 ? e.PSS! + 1 : 0,
    deviceTlb: e.DT === 1,
    interruptRemapping: e.IR === 1,
    extendedInterruptMode: e.EIM === 1,
    passThrough: e.PT === 1,
    snoopControl: e.SC === 1,
    pageRequest: e.PRS === 1,
    firstStage1G: c.FS1GP === 1,
  };
}

/** "CM SAGAW=0x6 MGAW=47 …" for messages: set flags and non-zero multi-bit fields. */
export function describeRegister(d: DecodedRegister, table: readonly FieldDef[]): string {
  const parts: string[] = [];
  for (const def of table) {
    const v = d.fields[def.name]!;
    if (def.width === 1) {
      if (v) parts.push(def.name);
    } else if (v) parts.push(`${def.name}=0x${v.toString(16)}`);
  }
  if (d.unknownBits.length) parts.push(`reserved bits ${d.unknownBits.join(',')}`);
  return `0x${d.raw.toString(16)}: ${parts.join(' ')}`;
}

/** intel-iommu properties as a test gives them (QEMU 11.1 names). */
export interface IntelIommuProps {
  'scalable-mode'?: boolean | string;
  'pasid-bits'?: number;
  fsts?: boolean | string;
  'device-iotlb'?: boolean | string;
  'caching-mode'?: boolean | string;
  intremap?: boolean | string;
  'aw-bits'?: number;
  'snoop-control'?: boolean | string;
  svm?: boolean | string;
  fs1gp?: boolean | string;
}

const on = (v: boolean | string | number | undefined): boolean => v === true || v === 'on' || v === 'true' || v === 1;

/**
 * What the guest must see for an intel-iommu configuration, as the subset of
 * VtdSummary that the configuration decides. The rules are QEMU's
 * (hw/i386/intel_iommu.c, vtd_cap_init) as observed with 11.1.3 under TCG:
 * scalable mode without fsts gives second-stage translation (and supervisor
 * requests); fsts gives first-stage instead (and FS1GP when fs1gp, default
 * on); pasid-bits N gives PASID with PSS = N-1; EIM stays off under TCG
 * (eim=auto turns on only with KVM's split irqchip); svm gives page
 * requests. Nothing QEMU offers today sets NEST or SLADS.
 */
export function expectedVtd(props: IntelIommuProps): Partial<Omit<VtdSummary, 'cap' | 'ecap'>> {
  const scalable = on(props['scalable-mode']);
  const fsts = scalable && on(props.fsts);
  const pasidBits = scalable ? (props['pasid-bits'] ?? 0) : 0;
  const aw = props['aw-bits'] ?? 48;
  return {
    cachingMode: on(props['caching-mode']),
    maxGuestAddressWidth: aw,
    scalableMode: scalable,
    firstStage: fsts,
    secondStage: scalable && !fsts,
    nested: false,
    secondStageAccessedDirty: false,
    pasid: pasidBits > 0,
    pasidBits,
    deviceTlb: on(props['device-iotlb']),
    interruptRemapping: props.intremap === undefined || props.intremap === 'auto' ? true : on(props.intremap),
    extendedInterruptMode: false,
    snoopControl: on(props['snoop-control']),
    firstStage1G: fsts && (props.fs1gp === undefined || on(props.fs1gp)),
    pageRequest: on(props.svm),
  };
}
