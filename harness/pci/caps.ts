/**
 * Walks a PCI function's capability lists from its configuration space as
 * sysfs gives it (/sys/bus/pci/devices/BDF/config: 4096 bytes for root on a
 * PCIe function with ECAM, 256 for conventional PCI, 64 for anyone else),
 * on a lab host (doctor) and in a guest alike. The virtual lab uses it to find the PASID capability that
 * vfio-pci synthesizes; guest tests use it on emulated devices.
 *
 * A malformed list (a pointer into the header, a misaligned pointer, a loop,
 * a pointer past the end) stops that walk with an entry in `problems`; the
 * capabilities found before it are kept.
 */

export interface PciCap {
  id: number;
  name: string;
  offset: number;
}

export interface PciExtCap extends PciCap {
  version: number;
}

export interface PciCapWalk {
  vendorId: number;
  deviceId: number;
  headerType: number;
  standard: PciCap[];
  extended: PciExtCap[];
  /** False when the buffer ends before 0x100 (no extended space to walk). */
  extendedVisible: boolean;
  problems: string[];
}

export const STD_CAP_NAMES: Readonly<Record<number, string>> = {
  0x01: 'PM',
  0x02: 'AGP',
  0x03: 'VPD',
  0x04: 'SLOTID',
  0x05: 'MSI',
  0x06: 'CHSWP',
  0x07: 'PCIX',
  0x08: 'HT',
  0x09: 'VNDR',
  0x0a: 'DBG',
  0x0b: 'CCRC',
  0x0c: 'SHPC',
  0x0d: 'SSVID',
  0x0e: 'AGP3',
  0x0f: 'SECDEV',
  0x10: 'EXP',
  0x11: 'MSIX',
  0x12: 'SATA',
  0x13: 'AF',
  0x14: 'EA',
};

export const EXT_CAP_NAMES: Readonly<Record<number, string>> = {
  0x0001: 'ERR',
  0x0002: 'VC',
  0x0003: 'DSN',
  0x0004: 'PWR',
  0x0005: 'RCLD',
  0x0006: 'RCILC',
  0x0007: 'RCEC',
  0x0008: 'MFVC',
  0x0009: 'VC9',
  0x000a: 'RCRB',
  0x000b: 'VNDR',
  0x000c: 'CAC',
  0x000d: 'ACS',
  0x000e: 'ARI',
  0x000f: 'ATS',
  0x0010: 'SRIOV',
  0x0011: 'MRIOV',
  0x0012: 'MCAST',
  0x0013: 'PRI',
  0x0015: 'REBAR',
  0x0016: 'DPA',
  0x0017: 'TPH',
  0x0018: 'LTR',
  0x0019: 'SECPCI',
  0x001a: 'PMUX',
  0x001b: 'PASID',
  0x001c: 'LNR',
  0x001d: 'DPC',
  0x001e: 'L1SS',
  0x001f: 'PTM',
  0x0020: 'MPHY',
  0x0021: 'FRS',
  0x0022: 'RTR',
  0x0023: 'DVSEC',
  0x0024: 'VF_REBAR',
  0x0025: 'DLF',
  0x0026: 'PL_16GT',
  0x0027: 'LMR',
  0x0028: 'HIER_ID',
  0x0029: 'NPEM',
  0x002a: 'PL_32GT',
  0x002b: 'ALT_PROT',
  0x002c: 'SFI',
  0x002d: 'SHADOW_FUNC',
  0x002e: 'DOE',
  0x002f: 'DEV3',
  0x0030: 'IDE',
  0x0031: 'PL_64GT',
};

const u8 = (b: Buffer, o: number): number => b.readUInt8(o);
const u16 = (b: Buffer, o: number): number => b.readUInt16LE(o);
const u32 = (b: Buffer, o: number): number => b.readUInt32LE(o);
const hex = (n: number, w = 2): string => `0x${n.toString(16).padStart(w, '0')}`;

export function walkPciCaps(config: Buffer): PciCapWalk {
  if (config.length < 64) throw new Error(`PCI config space: need at least the 64-byte header, got ${config.length} bytes`);
  const problems: string[] = [];
  const headerType = u8(config, 0x0e) & 0x7f;
  const standard: PciCap[] = [];
  const status = u16(config, 0x06);
  if (status & 0x10) {
    // Type 2 (CardBus) keeps its pointer at 0x14; types 0 and 1 at 0x34.
    let ptr = u8(config, headerType === 2 ? 0x14 : 0x34) & 0xfc;
    const seen = new Set<number>();
    while (ptr) {
      if (ptr < 0x40) {
        problems.push(`capability pointer ${hex(ptr)} points into the header`);
        break;
      }
      if (ptr + 2 > Math.min(config.length, 0x100)) {
        problems.push(`capability pointer ${hex(ptr)} is past the ${Math.min(config.length, 0x100)}-byte space`);
        break;
      }
      if (seen.has(ptr)) {
        problems.push(`capability list loops back to ${hex(ptr)}`);
        break;
      }
      seen.add(ptr);
      const id = u8(config, ptr);
      standard.push({ id, name: STD_CAP_NAMES[id] ?? `unknown(${hex(id)})`, offset: ptr });
      ptr = u8(config, ptr + 1) & 0xfc;
    }
  }
  const extended: PciExtCap[] = [];
  const extendedVisible = config.length >= 0x104;
  if (extendedVisible) {
    let off = 0x100;
    const seen = new Set<number>();
    for (;;) {
      const hdr = u32(config, off);
      // 0 at 0x100: no extended capabilities; all ones: the space is not
      // really there (conventional PCI behind the read).
      if (hdr === 0 || (hdr === 0xffffffff && off === 0x100)) break;
      if (seen.has(off)) {
        problems.push(`extended capability list loops back to ${hex(off, 3)}`);
        break;
      }
      seen.add(off);
      const id = hdr & 0xffff;
      extended.push({ id, name: EXT_CAP_NAMES[id] ?? `unknown(${hex(id, 4)})`, offset: off, version: (hdr >>> 16) & 0xf });
      const next = hdr >>> 20;
      if (next === 0) break;
      if (next < 0x100 || next & 3) {
        problems.push(`extended capability at ${hex(off, 3)} has a bad next pointer ${hex(next, 3)}`);
        break;
      }
      if (next + 4 > config.length) {
        problems.push(`extended capability at ${hex(off, 3)} points past the ${config.length}-byte space (${hex(next, 3)})`);
        break;
      }
      off = next;
    }
  }
  return { vendorId: u16(config, 0), deviceId: u16(config, 2), headerType, standard, extended, extendedVisible, problems };
}

export function findExtCap(walk: PciCapWalk, idOrName: number | string): PciExtCap | undefined {
  return walk.extended.find((c) => (typeof idOrName === 'number' ? c.id === idOrName : c.name === idOrName));
}

export function findStdCap(walk: PciCapWalk, idOrName: number | string): PciCap | undefined {
  return walk.standard.find((c) => (typeof idOrName === 'number' ? c.id === idOrName : c.name === idOrName));
}

/** The PASID extended capability's registers (PCIe 6.0 §7.8.8). */
export interface PasidCap {
  offset: number;
  execPermissionSupported: boolean;
  privilegedModeSupported: boolean;
  /** Max PASID Width: PASIDs have this many bits. */
  maxPasidWidth: number;
  enabled: boolean;
  execPermissionEnabled: boolean;
  privilegedModeEnabled: boolean;
}

export function decodePasidCap(config: Buffer, walk = walkPciCaps(config)): PasidCap | undefined {
  const c = findExtCap(walk, 0x1b);
  if (!c) return undefined;
  const cap = u16(config, c.offset + 4);
  const ctl = u16(config, c.offset + 6);
  return {
    offset: c.offset,
    execPermissionSupported: (cap & 0x2) !== 0,
    privilegedModeSupported: (cap & 0x4) !== 0,
    maxPasidWidth: (cap >> 8) & 0x1f,
    enabled: (ctl & 0x1) !== 0,
    execPermissionEnabled: (ctl & 0x2) !== 0,
    privilegedModeEnabled: (ctl & 0x4) !== 0,
  };
}

/** The ATS extended capability's registers (PCIe 6.0 §10.5.1). */
export interface AtsCap {
  offset: number;
  /** 0 means 32. */
  invalidateQueueDepth: number;
  pageAlignedRequest: boolean;
  globalInvalidate: boolean;
  enabled: boolean;
  /** Smallest Translation Unit (2^(12+STU) bytes). */
  stu: number;
}

export function decodeAtsCap(config: Buffer, walk = walkPciCaps(config)): AtsCap | undefined {
  const c = findExtCap(walk, 0x0f);
  if (!c) return undefined;
  const cap = u16(config, c.offset + 4);
  const ctl = u16(config, c.offset + 6);
  return {
    offset: c.offset,
    invalidateQueueDepth: cap & 0x1f,
    pageAlignedRequest: (cap & 0x20) !== 0,
    globalInvalidate: (cap & 0x40) !== 0,
    enabled: (ctl & 0x8000) !== 0,
    stu: ctl & 0x1f,
  };
}

/** "EXP@0x40 MSIX@0x9c | ERR@0x100 ATS@0x148" for messages. */
export function describeCaps(w: PciCapWalk): string {
  const s = w.standard.map((c) => `${c.name}@${hex(c.offset)}`).join(' ') || '(none)';
  const e = w.extended.map((c) => `${c.name}@${hex(c.offset, 3)}`).join(' ') || (w.extendedVisible ? '(none)' : '(not visible)');
  return `${s} | ${e}${w.problems.length ? ` | problems: ${w.problems.join('; ')}` : ''}`;
}
