/**
 * A synthetic PCIe endpoint built from a DeviceDescription: 4096 bytes of
 * config space with write masks, BARs backed by memory. QEMU's vfio-user
 * client reads and writes it through REGION_READ/WRITE; the regions are the
 * ones Linux's vfio-pci defines (BAR0-5, ROM, config, VGA).
 */
import type { DeviceDescription } from './description.js';
import { validateDeviceDescription } from './description.js';
import { Errno, IrqInfoFlags, RegionInfoFlags, type IrqInfo, type RegionInfo } from './protocol.js';

/** QEMU exposes no extended capabilities unless the config region has 4096 bytes. */
export const CONFIG_SPACE_SIZE = 4096;

/** Region indexes, as linux/vfio.h numbers them for PCI devices. */
export const PciRegion = { BAR0: 0, BAR5: 5, ROM: 6, CONFIG: 7, VGA: 8, COUNT: 9 } as const;
/** IRQ indexes, likewise. */
export const PciIrq = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4, COUNT: 5 } as const;

/** Standard registers and capability ids used below (PCI Local Bus 3.0, PCIe 6.0). */
export const Reg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;
export const CapId = { PM: 0x01, MSI: 0x05, EXP: 0x10 } as const;
export const ExtCapId = { ATS: 0x0f, PRI: 0x13, PASID: 0x1b } as const;
/** Offsets inside the PCI Express capability. */
export const Exp = { FLAGS: 0x02, DEVCAP: 0x04, DEVCTL: 0x08, DEVSTA: 0x0a, LNKCAP: 0x0c, LNKCTL: 0x10, LNKSTA: 0x12, DEVCAP2: 0x24, DEVCTL2: 0x28, LNKCAP2: 0x2c, LNKCTL2: 0x30, SIZEOF: 0x3c } as const;
export const DEVCAP2_EXT_FMT_FIELD = 1 << 20;
export const DEVCAP_FLR = 1 << 28;
export const DEVCTL_INITIATE_FLR = 1 << 15;
/**
 * 16-bit registers of the PCI Express capability an FLR leaves alone, with
 * the bits kept: DevCtl Max_Payload_Size and the Link's controls (PCIe 6.0
 * sec 6.6.2: an FLR does not reset the Link).
 */
const FLR_KEEPS: ReadonlyArray<readonly [number, number]> = [
  [Exp.DEVCTL, 0x00e0], // Max_Payload_Size
  [Exp.LNKCTL, 0xffff],
  [Exp.LNKCTL2, 0xffff],
];
export const STATUS_IMMEDIATE_READINESS = 1 << 0;
/** PMCSR bits: PowerState (1:0) and No_Soft_Reset (3). */
export const PMCSR_POWER_STATE = 0x0003;
export const PMCSR_NO_SOFT_RESET = 0x0008;
export const PM_CTRL = 4;

/** Which reset ran: DEVICE_RESET (power-on), FLR, or the D3hot→D0 soft reset. */
export type ResetKind = 'device' | 'flr' | 'pm';
export const DEVCAP2_EE_TLP_PREFIX = 1 << 21;

export interface CapabilityPlacement {
  id: number;
  name: string;
  offset: number;
  size: number;
}

/** A REGION_READ/WRITE the device refuses; `errno` goes into the error reply. */
export class RegionAccessError extends Error {
  override name = 'RegionAccessError';
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

const PAGE = 4096;

/** Sparse memory for a BAR: untouched pages read as zero and cost nothing. */
class BarMemory {
  private pages = new Map<number, Buffer>();
  constructor(readonly size: number) {}

  readInto(offset: number, count: number, dst: Buffer, at: number): void {
    dst.fill(0, at, at + count);
    this.each(offset, count, (page, from, len, done) => {
      const p = this.pages.get(page);
      if (p) p.copy(dst, at + done, from, from + len);
    });
  }

  write(offset: number, src: Buffer, from: number, count: number): void {
    this.each(offset, count, (page, pageFrom, len, done) => {
      let p = this.pages.get(page);
      if (!p) this.pages.set(page, (p = Buffer.alloc(PAGE)));
      src.copy(p, pageFrom, from + done, from + done + len);
    });
  }

  clear(): void {
    this.pages.clear();
  }

  private each(offset: number, count: number, fn: (page: number, from: number, len: number, done: number) => void): void {
    let done = 0;
    while (done < count) {
      const o = offset + done;
      const page = Math.floor(o / PAGE);
      const from = o - page * PAGE;
      const len = Math.min(PAGE - from, count - done);
      fn(page, from, len, done);
      done += len;
    }
  }
}

export class DeviceModel {
  readonly description: DeviceDescription;
  /** Current config space; read it, but write only through `write()`. */
  readonly config = Buffer.alloc(CONFIG_SPACE_SIZE);
  readonly capabilities: readonly CapabilityPlacement[];
  readonly extendedCapabilities: readonly CapabilityPlacement[];
  private readonly defaults = Buffer.alloc(CONFIG_SPACE_SIZE);
  /** Bits software may write, per byte. */
  private readonly wmask = new Uint8Array(CONFIG_SPACE_SIZE);
  /** Bits a 1 clears (RW1C), per byte. */
  private readonly w1cmask = new Uint8Array(CONFIG_SPACE_SIZE);
  private readonly bars: Array<BarMemory | undefined> = [];
  private pmOffset = 0;
  private expOffset = 0;
  private readonly resetCounts: Record<ResetKind, number> = { device: 0, flr: 0, pm: 0 };
  private lastFunction: 'flr' | 'pm' | undefined;

  constructor(description: DeviceDescription) {
    this.description = validateDeviceDescription(description);
    const d = this.description;
    const c = this.defaults;
    const w = new MaskWriter(this.wmask);

    c.writeUInt16LE(d.vendorId, Reg.VENDOR_ID);
    c.writeUInt16LE(d.deviceId, Reg.DEVICE_ID);
    // Memory space, bus master, parity, SERR, INTx disable; no I/O BARs here.
    w.u16(Reg.COMMAND, 0x0546);
    const reset = d.reset!;
    c.writeUInt16LE(0x0010 | (reset.immediateReadiness ? STATUS_IMMEDIATE_READINESS : 0), Reg.STATUS); // capability list
    w1c16(this.w1cmask, Reg.STATUS, 0xf900);
    c[Reg.REVISION] = d.revision;
    c.writeUIntLE(d.classCode, Reg.CLASS_PROG, 3);
    w.u8(Reg.CACHE_LINE_SIZE, 0xff);
    c[Reg.HEADER_TYPE] = 0x00;
    c.writeUInt16LE(d.subsystemVendorId, Reg.SUBSYSTEM_VENDOR_ID);
    c.writeUInt16LE(d.subsystemId, Reg.SUBSYSTEM_ID);
    // ROM_ADDRESS stays all read-only zero: no expansion ROM, so sizing it
    // (writing all-ones) reads back 0.
    w.u8(Reg.INTERRUPT_LINE, 0xff);
    c[Reg.INTERRUPT_PIN] = 0; // no INTx: this device raises no interrupts

    for (const b of d.bars) {
      const at = Reg.BAR0 + 4 * b.index;
      const flags = (b.is64 ? 0x4 : 0) | (b.prefetchable ? 0x8 : 0);
      c.writeUInt32LE(flags, at);
      // Address bits below the size read back 0: that is how software sizes a BAR.
      const low = b.size >= 2 ** 32 ? 0 : (~(b.size - 1) >>> 0) & 0xfffffff0;
      w.u32(at, low);
      if (b.is64) {
        const highSizeMask = b.size > 2 ** 32 ? b.size / 2 ** 32 - 1 : 0;
        w.u32(at + 4, ~highSizeMask >>> 0);
      }
      this.bars[b.index] = new BarMemory(b.size);
    }

    // Capability list from 0x40, each 4-byte aligned.
    const caps: CapabilityPlacement[] = [];
    let next = 0x40;
    const place = (id: number, name: string, size: number): number => {
      const offset = next;
      const prev = caps.at(-1);
      c[prev ? prev.offset + 1 : Reg.CAPABILITY_LIST] = offset;
      c[offset] = id;
      caps.push({ id, name, offset, size });
      next = (offset + size + 3) & ~3;
      return offset;
    };
    if (d.pm) {
      const o = place(CapId.PM, 'Power Management', 8);
      this.pmOffset = o;
      c.writeUInt16LE(0x0003, o + 2); // PMC: version 3, D0 and D3hot only, no PME
      // PMCSR: D0; No_Soft_Reset set means D3hot→D0 keeps all state (no PM reset).
      c.writeUInt16LE(reset.pmSoftReset ? 0 : PMCSR_NO_SOFT_RESET, o + PM_CTRL);
      w.u16(o + PM_CTRL, PMCSR_POWER_STATE);
    }
    if (d.msi) {
      const o = place(CapId.MSI, 'MSI', 14);
      c.writeUInt16LE(0x0080, o + 2); // 64-bit address, one vector
      w.u16(o + 2, 0x0001);
      w.u32(o + 4, 0xfffffffc);
      w.u32(o + 8, 0xffffffff);
      w.u16(o + 12, 0xffff);
    }
    {
      const o = place(CapId.EXP, 'PCI Express', Exp.SIZEOF);
      this.expOffset = o;
      c.writeUInt16LE(0x0002, o + Exp.FLAGS); // version 2, PCI Express Endpoint
      // Role-based error reporting, MPS 128. Initiate FLR (DevCtl bit 15) is
      // not in the write mask: it reads 0 and write() acts on it.
      c.writeUInt32LE(0x00008000 | (reset.flr ? DEVCAP_FLR : 0), o + Exp.DEVCAP);
      c.writeUInt16LE(0x2810, o + Exp.DEVCTL); // relaxed ordering, no snoop, MRRS 512
      w.u16(o + Exp.DEVCTL, 0x78ff);
      w1c16(this.w1cmask, o + Exp.DEVSTA, 0x000f);
      c.writeUInt32LE(0x00000011, o + Exp.LNKCAP); // 2.5 GT/s, x1
      w.u16(o + Exp.LNKCTL, 0x00cb);
      c.writeUInt16LE(0x1011, o + Exp.LNKSTA); // 2.5 GT/s, x1, slot clock
      let devcap2 = 0x10; // completion timeout disable supported
      if (d.pcie.extendedFmtField) devcap2 |= DEVCAP2_EXT_FMT_FIELD;
      if (d.pcie.endEndTlpPrefix) devcap2 |= DEVCAP2_EE_TLP_PREFIX;
      c.writeUInt32LE(devcap2, o + Exp.DEVCAP2);
      w.u16(o + Exp.DEVCTL2, 0x001f);
      c.writeUInt32LE(0x00000002, o + Exp.LNKCAP2); // supports 2.5 GT/s
      c.writeUInt16LE(0x0001, o + Exp.LNKCTL2);
    }
    this.capabilities = caps;

    // Extended capabilities from 0x100. With none, 0x100 stays 0, which
    // software reads as an empty list.
    const ext: CapabilityPlacement[] = [];
    let extNext = 0x100;
    const placeExt = (id: number, name: string, size: number): number => {
      const offset = extNext;
      const prev = ext.at(-1);
      if (prev) c.writeUInt32LE(c.readUInt32LE(prev.offset) | (offset << 20), prev.offset);
      c.writeUInt32LE(id | (1 << 16), offset); // version 1, next filled in later
      ext.push({ id, name, offset, size });
      extNext = (offset + size + 3) & ~3;
      return offset;
    };
    if (d.pasid) {
      const p = d.pasid;
      const o = placeExt(ExtCapId.PASID, 'PASID', 8);
      c.writeUInt16LE((p.exec ? 0x2 : 0) | (p.priv ? 0x4 : 0) | (p.widthBits << 8), o + 4);
      w.u16(o + 6, 0x1 | (p.exec ? 0x2 : 0) | (p.priv ? 0x4 : 0));
    }
    if (d.ats) {
      const a = d.ats;
      const o = placeExt(ExtCapId.ATS, 'ATS', 8);
      c.writeUInt16LE(a.invalidateQueueDepth | (a.pageAlignedRequest ? 0x20 : 0) | (a.globalInvalidate ? 0x40 : 0), o + 4);
      w.u16(o + 6, 0x801f); // enable, smallest translation unit
    }
    if (d.pri) {
      const r = d.pri;
      const o = placeExt(ExtCapId.PRI, 'PRI', 16);
      // Control: enable is read-write; reset (bit 1) is write-only and reads 0.
      w.u16(o + 4, 0x0001);
      // Status: Stopped stays set (no request is ever outstanding), as the
      // kernel's pci_enable_pri() requires before enabling.
      c.writeUInt16LE(0x0100 | (r.prgResponsePasidRequired ? 0x8000 : 0), o + 6);
      w1c16(this.w1cmask, o + 6, 0x0003);
      c.writeUInt32LE(r.outstandingPageRequests, o + 8);
      w.u32(o + 12, 0xffffffff);
    }
    this.extendedCapabilities = ext;
    this.defaults.copy(this.config);
  }

  /** How many times DEVICE_RESET ran. */
  get resetCount(): number {
    return this.resetCounts.device;
  }

  /** Resets so far by kind: DEVICE_RESET, FLR, D3hot→D0. */
  get resets(): Readonly<Record<ResetKind, number>> {
    return { ...this.resetCounts };
  }

  /** FLRs and D3hot→D0 soft resets so far. */
  get functionResetCount(): number {
    return this.resetCounts.flr + this.resetCounts.pm;
  }

  /** The kind of the latest FLR or soft reset. */
  get lastFunctionReset(): 'flr' | 'pm' | undefined {
    return this.lastFunction;
  }

  /** DEVICE_RESET: back to power-on state, config defaults, BAR memory zero. */
  reset(): void {
    this.defaults.copy(this.config);
    for (const b of this.bars) b?.clear();
    this.resetCounts.device++;
  }

  /**
   * What software sees after an FLR or a D3hot→D0 soft reset. This model has
   * no sticky (RWS/RW1CS) bits and no PME context, the things PCI PM keeps
   * across the soft reset, so that one is the power-on state. An FLR leaves
   * the Link alone: Max_Payload_Size and the Link Control registers stay
   * (PCIe 6.0 sec 6.6.2).
   */
  private functionReset(kind: 'flr' | 'pm'): void {
    const cfg = this.config;
    const kept = kind === 'flr' ? FLR_KEEPS.map(([rel, mask]) => [this.expOffset + rel, mask, cfg.readUInt16LE(this.expOffset + rel) & mask] as const) : [];
    this.defaults.copy(cfg);
    for (const [at, mask, v] of kept) cfg.writeUInt16LE(((cfg.readUInt16LE(at) & ~mask) | v) & 0xffff, at);
    for (const b of this.bars) b?.clear();
    this.resetCounts[kind]++;
    this.lastFunction = kind;
  }

  /** DEVICE_GET_REGION_INFO for one index; absent regions have size 0, as in Linux's vfio-pci. */
  regionInfo(index: number): RegionInfo | undefined {
    if (!Number.isInteger(index) || index < 0 || index >= PciRegion.COUNT) return undefined;
    const size = this.regionSize(index);
    const flags = size > 0 ? RegionInfoFlags.READ | RegionInfoFlags.WRITE : 0;
    return { index, flags, size, offset: 0 };
  }

  /** DEVICE_GET_IRQ_INFO: no INTx, MSI per the description, error and request notifiers like Linux's vfio-pci. */
  irqInfo(index: number): IrqInfo | undefined {
    switch (index) {
      case PciIrq.INTX:
        return { index, flags: IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED, count: 0 };
      case PciIrq.MSI:
        return { index, flags: IrqInfoFlags.EVENTFD | IrqInfoFlags.NORESIZE, count: this.description.msi ? 1 : 0 };
      case PciIrq.MSIX:
        return { index, flags: IrqInfoFlags.EVENTFD | IrqInfoFlags.NORESIZE, count: 0 };
      case PciIrq.ERR:
      case PciIrq.REQ:
        return { index, flags: IrqInfoFlags.EVENTFD, count: 1 };
      default:
        return undefined;
    }
  }

  regionSize(index: number): number {
    if (index === PciRegion.CONFIG) return CONFIG_SPACE_SIZE;
    if (index >= PciRegion.BAR0 && index <= PciRegion.BAR5) return this.bars[index]?.size ?? 0;
    return 0;
  }

  /** Copies `count` bytes of region `region` at `offset` into dst[at..]. */
  readInto(region: number, offset: number, count: number, dst: Buffer, at: number): void {
    this.check(region, offset, count, 'read');
    if (region === PciRegion.CONFIG) this.config.copy(dst, at, offset, offset + count);
    else this.bars[region]!.readInto(offset, count, dst, at);
  }

  read(region: number, offset: number, count: number): Buffer {
    const b = Buffer.allocUnsafe(count);
    this.readInto(region, offset, count, b, 0);
    return b;
  }

  /** Writes src[from, from+count) to region `region` at `offset`, through the write masks for config. */
  write(region: number, offset: number, src: Buffer, from = 0, count = src.length - from): void {
    this.check(region, offset, count, 'write');
    if (region !== PciRegion.CONFIG) {
      this.bars[region]!.write(offset, src, from, count);
      return;
    }
    const cfg = this.config;
    const pmcsr = this.pmOffset ? this.pmOffset + PM_CTRL : -1;
    const oldPowerState = pmcsr >= 0 ? cfg[pmcsr]! & PMCSR_POWER_STATE : 0;
    const covers = (at: number): boolean => offset <= at && at < offset + count;
    // Initiate FLR is bit 7 of DevCtl's high byte; it is write-only (reads 0).
    const flrByte = this.expOffset + Exp.DEVCTL + 1;
    const flr = this.description.reset!.flr && covers(flrByte) && (src[from + flrByte - offset]! & (DEVCTL_INITIATE_FLR >> 8)) !== 0;
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      const v = src[from + i]!;
      const m = this.wmask[o]!;
      cfg[o] = ((cfg[o]! & ~m) | (v & m)) & ~(v & this.w1cmask[o]!);
    }
    if (flr) {
      this.functionReset('flr');
      return;
    }
    if (pmcsr >= 0 && covers(pmcsr)) {
      const s = cfg[pmcsr]! & PMCSR_POWER_STATE;
      // D1 and D2 are not supported: the spec says such a write is ignored.
      if (s === 1 || s === 2) cfg[pmcsr] = (cfg[pmcsr]! & ~PMCSR_POWER_STATE) | oldPowerState;
      // D3hot→D0 with No_Soft_Reset clear: the function comes back D0uninitialized.
      else if (s === 0 && oldPowerState === 3 && this.description.reset!.pmSoftReset) this.functionReset('pm');
    }
  }

  /** Current power state from PMCSR (0 = D0, 3 = D3hot); 0 without PM. */
  get powerState(): number {
    return this.pmOffset ? this.config[this.pmOffset + PM_CTRL]! & PMCSR_POWER_STATE : 0;
  }

  /** The capability placed with this id, standard or extended. */
  findCapability(id: number, extended = false): CapabilityPlacement | undefined {
    return (extended ? this.extendedCapabilities : this.capabilities).find((c) => c.id === id);
  }

  private check(region: number, offset: number, count: number, what: string): void {
    const size = Number.isInteger(region) && region >= 0 && region < PciRegion.COUNT ? this.regionSize(region) : 0;
    if (size === 0) throw new RegionAccessError(Errno.EINVAL, `${what} of region ${region}, which this device does not have`);
    if (!(offset >= 0) || count < 0 || offset + count > size) {
      throw new RegionAccessError(Errno.EINVAL, `${what} of ${count} bytes at ${offset} is outside region ${region} (${size} bytes)`);
    }
  }
}

/** Sets write-mask bits little-endian. */
class MaskWriter {
  constructor(private readonly m: Uint8Array) {}
  u8(at: number, v: number): void {
    this.m[at] = v & 0xff;
  }
  u16(at: number, v: number): void {
    this.u8(at, v);
    this.u8(at + 1, v >>> 8);
  }
  u32(at: number, v: number): void {
    this.u16(at, v);
    this.u16(at + 2, v >>> 16);
  }
}

function w1c16(m: Uint8Array, at: number, v: number): void {
  m[at] = v & 0xff;
  m[at + 1] = (v >>> 8) & 0xff;
}
