import { decodeRegister, type DecodedRegister, type FieldDef } from './vtd-regs.js';

/**
 * The intel-iommu debugfs files of a guest kernel built with
 * INTEL_IOMMU_DEBUGFS (/sys/kernel/debug/iommu/intel/): the register set and
 * the translation structures the driver programmed. Formats are those of
 * Linux 7.2 drivers/iommu/intel/debugfs.c.
 */

/** "IOMMU: dmar0 Register Base Address: fed90000" then "NAME\t0xOFF\t\t0xVALUE" rows. */
export function parseIommuRegset(text: string): Map<string, Map<string, bigint>> {
  const units = new Map<string, Map<string, bigint>>();
  let cur: Map<string, bigint> | undefined;
  for (const line of text.split('\n')) {
    const head = /^IOMMU: (\S+) Register Base Address:/.exec(line);
    if (head) {
      cur = new Map();
      units.set(head[1]!, cur);
      continue;
    }
    const row = /^(\w+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s*$/i.exec(line);
    if (row && cur) cur.set(row[1]!, BigInt(`0x${row[2]}`));
  }
  return units;
}

export const GSTS_FIELDS: readonly FieldDef[] = [
  { name: 'CFIS', lsb: 23, width: 1, what: 'compatibility format interrupts' },
  { name: 'IRTPS', lsb: 24, width: 1, what: 'interrupt remap table pointer set' },
  { name: 'IRES', lsb: 25, width: 1, what: 'interrupt remapping enabled' },
  { name: 'QIES', lsb: 26, width: 1, what: 'queued invalidation enabled' },
  { name: 'WBFS', lsb: 27, width: 1, what: 'write buffer flush' },
  { name: 'AFLS', lsb: 28, width: 1, what: 'advanced fault logging' },
  { name: 'FLS', lsb: 29, width: 1, what: 'fault log' },
  { name: 'RTPS', lsb: 30, width: 1, what: 'root table pointer set' },
  { name: 'TES', lsb: 31, width: 1, what: 'translation enabled' },
];

export function decodeGsts(raw: bigint): DecodedRegister {
  return decodeRegister(raw, GSTS_FIELDS);
}

/** PASID-table entry PGTT (VT-d 3.x §9.6), and 'legacy' for a legacy-mode context. */
export type TranslationMode = 'legacy' | 'first-stage' | 'second-stage' | 'nested' | 'pass-through' | `pgtt-${number}`;

const PGTT: Record<number, TranslationMode> = { 1: 'first-stage', 2: 'second-stage', 3: 'nested', 4: 'pass-through' };

export interface TranslationEntry {
  iommu: string;
  /** "00:01.0" as debugfs prints it (no segment). */
  bdf: string;
  root: { hi: bigint; lo: bigint };
  context: { hi: bigint; lo: bigint };
  /** -1 in legacy mode (no PASID table). */
  pasid: number;
  /** PASID-table entry words val[0..2] (debugfs prints them as val[2]:val[1]:val[0]). */
  pasidEntry: [bigint, bigint, bigint];
  mode: TranslationMode;
  /** Domain id: from the PASID entry in scalable mode, the context entry in legacy mode. */
  domainId: number;
  present: boolean;
}

export interface TranslationStruct {
  rootTables: Map<string, bigint>;
  entries: TranslationEntry[];
  /** Lines that matched no known shape, kept for messages. */
  unparsed: string[];
}

const X = '0x([0-9a-f]{16})';
const ENTRY = new RegExp(`^([0-9a-f]{2}:[0-9a-f]{2}\\.[0-7])\\t${X}:${X}\\t${X}:${X}\\t(-?\\d+)\\s*\\t${X}:${X}:${X}$`, 'i');

export function parseDmarTranslationStruct(text: string): TranslationStruct {
  const rootTables = new Map<string, bigint>();
  const entries: TranslationEntry[] = [];
  const unparsed: string[] = [];
  let iommu = '';
  for (const line of text.split('\n')) {
    if (!line.trim() || line.startsWith('B.D.F')) continue;
    const head = /^IOMMU (\S+): Root Table Address: 0x([0-9a-f]+)/i.exec(line);
    if (head) {
      iommu = head[1]!;
      rootTables.set(iommu, BigInt(`0x${head[2]}`));
      continue;
    }
    const m = ENTRY.exec(line);
    if (!m) {
      unparsed.push(line);
      continue;
    }
    const v = m.slice(2) as string[];
    const big = (s: string): bigint => BigInt(`0x${s}`);
    const pasid = Number(v[4]);
    const val2 = big(v[5]!);
    const val1 = big(v[6]!);
    const val0 = big(v[7]!);
    const ctxHi = big(v[2]!);
    const ctxLo = big(v[3]!);
    const legacy = pasid === -1;
    const pgtt = Number((val0 >> 6n) & 7n);
    entries.push({
      iommu,
      bdf: m[1]!,
      root: { hi: big(v[0]!), lo: big(v[1]!) },
      context: { hi: ctxHi, lo: ctxLo },
      pasid,
      pasidEntry: [val0, val1, val2],
      mode: legacy ? 'legacy' : (PGTT[pgtt] ?? `pgtt-${pgtt}`),
      // Legacy context entry: DID in bits 87:72, i.e. hi bits 23:8.
      domainId: legacy ? Number((ctxHi >> 8n) & 0xffffn) : Number(val1 & 0xffffn),
      present: legacy ? (ctxLo & 1n) === 1n : (val0 & 1n) === 1n,
    });
  }
  return { rootTables, entries, unparsed };
}
