/**
 * vfio-user wire format, as QEMU 11.1's client speaks it (hw/vfio-user/protocol.h,
 * docs/interop/vfio-user.rst). Pure: no sockets here. All fields are in the
 * host's byte order, which the spec fixes as the host's; x86_64 and aarch64
 * hosts are little-endian, so everything is read and written little-endian.
 */

/** Every message, request or reply, starts with this 16-byte header. */
export const HEADER_SIZE = 16;

export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  // 14 was VFIO_USER_DIRTY_PAGES in QEMU's header; the spec no longer lists it.
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;
export type CommandName = keyof typeof Command;

const commandNames = new Map<number, CommandName>(
  Object.entries(Command).map(([k, v]) => [v, k as CommandName]),
);
/** "DMA_MAP", or "command 99" for a number the spec does not define. */
export function commandName(cmd: number): string {
  return commandNames.get(cmd) ?? `command ${cmd}`;
}

/** Header flags: bits 0-3 are the type, then No_reply and Error. */
export const Flags = {
  TYPE_MASK: 0xf,
  TYPE_REQUEST: 0x0,
  TYPE_REPLY: 0x1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

/** Linux errno values used in error replies (x86_64/aarch64 numbering). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  E2BIG: 7,
  EFAULT: 14,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ENOSYS: 38,
  ENOTSUP: 95,
} as const;

export interface Header {
  msgId: number;
  command: number;
  /** Size of the whole message, header included. */
  size: number;
  flags: number;
  /** errno in an error reply; reserved (0) in a request. */
  error: number;
}

export function decodeHeader(buf: Buffer, at = 0): Header {
  if (buf.length - at < HEADER_SIZE) throw new RangeError(`vfio-user header needs ${HEADER_SIZE} bytes, got ${buf.length - at}`);
  return {
    msgId: buf.readUInt16LE(at),
    command: buf.readUInt16LE(at + 2),
    size: buf.readUInt32LE(at + 4),
    flags: buf.readUInt32LE(at + 8),
    error: buf.readUInt32LE(at + 12),
  };
}

export function encodeHeader(h: Header, buf: Buffer, at = 0): void {
  buf.writeUInt16LE(h.msgId, at);
  buf.writeUInt16LE(h.command, at + 2);
  buf.writeUInt32LE(h.size, at + 4);
  buf.writeUInt32LE(h.flags >>> 0, at + 8);
  buf.writeUInt32LE(h.error >>> 0, at + 12);
}

/**
 * A reply to request (msgId, command) carrying `payloadSize` bytes after the
 * header; the caller fills the payload from offset HEADER_SIZE.
 */
export function allocReply(msgId: number, command: number, payloadSize: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + payloadSize);
  encodeHeader({ msgId, command, size: HEADER_SIZE + payloadSize, flags: Flags.TYPE_REPLY, error: 0 }, b);
  return b;
}

/** The spec: "If an error occurs, the reply message must only include the reply header." */
export function encodeErrorReply(msgId: number, command: number, errno: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  encodeHeader({ msgId, command, size: HEADER_SIZE, flags: Flags.TYPE_REPLY | Flags.ERROR, error: errno }, b);
  return b;
}

// ---------------------------------------------------------------------------
// Framing

/**
 * One message as the reader hands it out. The object and `buf` are reused:
 * they are valid only during the callback that receives them; copy what you
 * keep. The payload is `buf[bodyStart, bodyStart + size - HEADER_SIZE)`.
 */
export interface Frame {
  msgId: number;
  command: number;
  size: number;
  flags: number;
  error: number;
  buf: Buffer;
  bodyStart: number;
}

/** Why the reader could not frame a message; the stream is unusable after 'bad-size'. */
export type FrameProblem =
  | { kind: 'bad-size'; header: Header }
  | { kind: 'oversized'; header: Header; limit: number };

export interface FrameSink {
  frame(f: Frame): void;
  /** A message the reader will not hand out; see FrameReader. */
  problem(p: FrameProblem): void;
}

/**
 * Splits a byte stream into vfio-user messages. Bytes are copied at most once:
 * whole messages inside a chunk are handed out in place, and only a trailing
 * partial message is kept, in a buffer that grows by doubling and is compacted
 * rather than concatenated, so a stream of N bytes costs O(N) copying.
 *
 * A header whose size is below 16 cannot be skipped past (the next message's
 * start is unknown): the reader reports 'bad-size' and drops everything after.
 * A message larger than `maxMessageSize` is reported as 'oversized' and its
 * bytes are discarded as they arrive (the server ends the session instead).
 *
 * pause(), called from the sink, stops handing out messages after the current
 * one: what follows is kept until resume(). The server uses it for
 * backpressure, so one read of small requests cannot queue unbounded replies.
 */
export class FrameReader {
  private pending: Buffer;
  private start = 0;
  private end = 0;
  private discard = 0;
  private broken = false;
  private paused = false;
  private readonly f: Frame = { msgId: 0, command: 0, size: 0, flags: 0, error: 0, buf: Buffer.alloc(0), bodyStart: 0 };

  constructor(
    private readonly sink: FrameSink,
    private readonly maxMessageSize: number,
    initialCapacity = 64 * 1024,
  ) {
    this.pending = Buffer.allocUnsafe(initialCapacity);
  }

  /** Bytes held back waiting for the rest of a message. */
  get buffered(): number {
    return this.end - this.start;
  }

  /** True once a 'bad-size' header made the stream unframeable. */
  get isBroken(): boolean {
    return this.broken;
  }

  /** Stops after the message being handed out; the rest waits for resume(). */
  pause(): void {
    this.paused = true;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Hands out what was kept while paused, until done or paused again. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.broken || this.end === this.start) return;
    this.start = this.drain(this.pending, this.start, this.end);
    if (this.start === this.end || this.broken) this.start = this.end = 0;
  }

  push(chunk: Buffer): void {
    if (this.broken) return;
    if (this.paused) {
      this.keep(chunk, 0);
      return;
    }
    let at = 0;
    if (this.discard > 0) {
      const n = Math.min(this.discard, chunk.length);
      this.discard -= n;
      at = n;
      if (at === chunk.length) return;
    }
    if (this.end === this.start) {
      // Fast path: nothing pending, frame straight out of the chunk.
      at = this.drain(chunk, at, chunk.length);
      if (at < chunk.length && !this.broken) this.keep(chunk, at);
      return;
    }
    this.keep(chunk, at);
    this.start = this.drain(this.pending, this.start, this.end);
    if (this.start === this.end || this.broken) this.start = this.end = 0;
  }

  /** Hands out every complete message in buf[from, to); returns where the rest starts. */
  private drain(buf: Buffer, from: number, to: number): number {
    let at = from;
    while (to - at >= HEADER_SIZE && !this.paused) {
      const size = buf.readUInt32LE(at + 4);
      if (size < HEADER_SIZE) {
        this.broken = true;
        this.sink.problem({ kind: 'bad-size', header: decodeHeader(buf, at) });
        return to;
      }
      if (size > this.maxMessageSize) {
        const header = decodeHeader(buf, at);
        const have = Math.min(size, to - at);
        this.discard = size - have;
        at += have;
        this.sink.problem({ kind: 'oversized', header, limit: this.maxMessageSize });
        if (this.discard > 0) return to;
        continue;
      }
      if (to - at < size) break;
      const f = this.f;
      f.msgId = buf.readUInt16LE(at);
      f.command = buf.readUInt16LE(at + 2);
      f.size = size;
      f.flags = buf.readUInt32LE(at + 8);
      f.error = buf.readUInt32LE(at + 12);
      f.buf = buf;
      f.bodyStart = at + HEADER_SIZE;
      at += size;
      this.sink.frame(f);
      if (this.broken) return to;
    }
    return at;
  }

  /** Appends chunk[at..] to the pending bytes, compacting or growing as needed. */
  private keep(chunk: Buffer, at: number): void {
    const n = chunk.length - at;
    if (this.pending.length - this.end < n) {
      const live = this.end - this.start;
      if (this.pending.length >= live + n && this.start > 0) {
        this.pending.copy(this.pending, 0, this.start, this.end);
      } else {
        let cap = this.pending.length * 2;
        while (cap < live + n) cap *= 2;
        const bigger = Buffer.allocUnsafe(cap);
        this.pending.copy(bigger, 0, this.start, this.end);
        this.pending = bigger;
      }
      this.start = 0;
      this.end = live;
    }
    chunk.copy(this.pending, this.end, at);
    this.end += n;
  }
}

// ---------------------------------------------------------------------------
// Payloads (offsets are from the end of the header)

/** VERSION request and reply: major u16, minor u16, then JSON with a trailing NUL. */
export interface VersionPayload {
  major: number;
  minor: number;
  /** The JSON text without its NUL; '' when the sender sent none. */
  json: string;
}
export const VERSION_MAJOR = 0;
export const VERSION_MINOR = 0;

export function decodeVersion(buf: Buffer, at: number, len: number): VersionPayload {
  if (len < 4) throw new PayloadError('VERSION', `payload is ${len} bytes, needs at least 4 (major, minor)`);
  let json = '';
  if (len > 4) {
    const text = buf.subarray(at + 4, at + len);
    const nul = text.indexOf(0);
    if (nul !== text.length - 1) throw new PayloadError('VERSION', nul < 0 ? 'capabilities JSON lacks its terminating NUL' : `NUL at byte ${nul} inside the capabilities JSON`);
    json = text.toString('utf8', 0, nul);
  }
  return { major: buf.readUInt16LE(at), minor: buf.readUInt16LE(at + 2), json };
}

/** An empty `json` sends no version data at all (it is optional); otherwise JSON and its NUL. */
export function encodeVersionReply(msgId: number, v: VersionPayload): Buffer {
  const json = Buffer.from(v.json, 'utf8');
  const b = allocReply(msgId, Command.VERSION, 4 + (json.length ? json.length + 1 : 0));
  b.writeUInt16LE(v.major, HEADER_SIZE);
  b.writeUInt16LE(v.minor, HEADER_SIZE + 2);
  if (json.length) {
    json.copy(b, HEADER_SIZE + 4);
    b[b.length - 1] = 0;
  }
  return b;
}

/** The capabilities a server offers in its VERSION reply. */
export interface ServerCapabilities {
  /** How many fds the server accepts in one message. */
  max_msg_fds: number;
  /** Largest `count` in REGION/DMA read and write messages. */
  max_data_xfer_size: number;
  /** DMA page sizes, or'ed together. */
  pgsizes: number;
  /** DMA mappings valid at once; QEMU refuses more than 65535. */
  max_dma_maps: number;
}

export const DEFAULT_CAPABILITIES: ServerCapabilities = {
  max_msg_fds: 8,
  max_data_xfer_size: 1024 * 1024,
  pgsizes: 4096,
  max_dma_maps: 65535,
};

export function capabilitiesJson(c: ServerCapabilities): string {
  return JSON.stringify({ capabilities: c });
}

/** DMA_MAP: argsz u32, flags u32 (1 read, 2 write), offset u64, address u64, size u64. */
export interface DmaMap {
  argsz: number;
  flags: number;
  offset: bigint;
  iova: bigint;
  size: bigint;
}
export const DMA_MAP_SIZE = 32;
export const DmaMapFlags = { READ: 1, WRITE: 2 } as const;

export function decodeDmaMap(buf: Buffer, at: number, len: number): DmaMap {
  need('DMA_MAP', len, DMA_MAP_SIZE);
  return {
    argsz: buf.readUInt32LE(at),
    flags: buf.readUInt32LE(at + 4),
    offset: buf.readBigUInt64LE(at + 8),
    iova: buf.readBigUInt64LE(at + 16),
    size: buf.readBigUInt64LE(at + 24),
  };
}

/** Largest DMA address (exclusive) the server accepts by default: 57 bits, the widest IOVA of VT-d (5-level) and beyond SMMUv3's 52. */
export const DEFAULT_DMA_ADDRESS_BITS = 57;

/**
 * Refuses a DMA_MAP no client can mean: a short argsz, flags other than READ
 * and WRITE, an empty or unaligned range, or one that wraps past 2^64 or ends
 * beyond 2^addressBits. `pgsize` is the smallest page size the server offered.
 * Whether an fd came with the message cannot be checked: this server reads
 * without a control buffer, so the kernel drops passed fds (server.ts).
 */
export function checkDmaMap(m: DmaMap, len: number, pgsize: number, addressBits = DEFAULT_DMA_ADDRESS_BITS): void {
  const bad = (why: string): never => {
    throw new PayloadError('DMA_MAP', why);
  };
  if (m.argsz < DMA_MAP_SIZE || m.argsz > len) bad(`argsz ${m.argsz} is outside ${DMA_MAP_SIZE}..${len} (the payload's size)`);
  const unknown = m.flags & ~(DmaMapFlags.READ | DmaMapFlags.WRITE);
  if (unknown) bad(`flags 0x${m.flags.toString(16)} have unknown bits 0x${unknown.toString(16)} (known: READ 1, WRITE 2)`);
  const page = BigInt(pgsize);
  if (m.size === 0n) bad('size is 0');
  if (m.iova % page) bad(`address 0x${m.iova.toString(16)} is not aligned to the page size ${pgsize}`);
  if (m.size % page) bad(`size 0x${m.size.toString(16)} is not a multiple of the page size ${pgsize}`);
  const end = m.iova + m.size;
  if (end > 1n << 64n) bad(`address 0x${m.iova.toString(16)} + size 0x${m.size.toString(16)} wraps past 2^64`);
  if (end > 1n << BigInt(addressBits)) bad(`range 0x${m.iova.toString(16)}+0x${m.size.toString(16)} ends beyond 2^${addressBits}, the widest DMA address this server accepts`);
}

/** DMA_UNMAP: known flags only; ALL with a zero range (the spec); no range past 2^64. */
export function checkDmaUnmap(u: DmaUnmap): void {
  const bad = (why: string): never => {
    throw new PayloadError('DMA_UNMAP', why);
  };
  const unknown = u.flags & ~(DmaUnmapFlags.GET_DIRTY_BITMAP | DmaUnmapFlags.ALL);
  if (unknown) bad(`flags 0x${u.flags.toString(16)} have unknown bits 0x${unknown.toString(16)}`);
  if (u.flags & DmaUnmapFlags.ALL && (u.iova !== 0n || u.size !== 0n)) bad(`ALL needs address and size 0, got 0x${u.iova.toString(16)}+0x${u.size.toString(16)}`);
  if (u.iova + u.size > 1n << 64n) bad(`address 0x${u.iova.toString(16)} + size 0x${u.size.toString(16)} wraps past 2^64`);
}

export function encodeDmaMap(m: DmaMap, buf: Buffer, at: number): void {
  buf.writeUInt32LE(m.argsz, at);
  buf.writeUInt32LE(m.flags, at + 4);
  buf.writeBigUInt64LE(m.offset, at + 8);
  buf.writeBigUInt64LE(m.iova, at + 16);
  buf.writeBigUInt64LE(m.size, at + 24);
}

/** DMA_UNMAP: argsz u32, flags u32, address u64, size u64; the reply echoes it. */
export interface DmaUnmap {
  argsz: number;
  flags: number;
  iova: bigint;
  size: bigint;
}
export const DMA_UNMAP_SIZE = 24;
/** From linux/vfio.h: GET_DIRTY_BITMAP 1<<0, ALL 1<<1. */
export const DmaUnmapFlags = { GET_DIRTY_BITMAP: 1, ALL: 2 } as const;

export function decodeDmaUnmap(buf: Buffer, at: number, len: number): DmaUnmap {
  need('DMA_UNMAP', len, DMA_UNMAP_SIZE);
  return {
    argsz: buf.readUInt32LE(at),
    flags: buf.readUInt32LE(at + 4),
    iova: buf.readBigUInt64LE(at + 8),
    size: buf.readBigUInt64LE(at + 16),
  };
}

/** DEVICE_GET_INFO reply: argsz, flags, num_regions, num_irqs (u32 each). */
export interface DeviceInfo {
  flags: number;
  numRegions: number;
  numIrqs: number;
}
export const DEVICE_INFO_SIZE = 16;
export const DeviceInfoFlags = { RESET: 1, PCI: 2 } as const;

export function encodeDeviceInfoReply(msgId: number, info: DeviceInfo): Buffer {
  return u32Reply(msgId, Command.DEVICE_GET_INFO, [DEVICE_INFO_SIZE, info.flags, info.numRegions, info.numIrqs]);
}

/**
 * The head shared by the GET_INFO requests: argsz (u32), flags (u32) and, for
 * region and IRQ info, index (u32). argsz is the room the client has for the
 * reply payload; as Linux's ioctls do, refuse it when it is below `replySize`.
 */
export function decodeInfoRequest(
  buf: Buffer,
  at: number,
  len: number,
  what: 'DEVICE_GET_INFO' | 'DEVICE_GET_REGION_INFO' | 'DEVICE_GET_IRQ_INFO',
  replySize: number,
): { argsz: number; index: number } {
  const withIndex = what !== 'DEVICE_GET_INFO';
  need(what, len, withIndex ? 12 : 4);
  const argsz = buf.readUInt32LE(at);
  if (argsz < replySize) throw new PayloadError(what, `argsz ${argsz} is below the reply's ${replySize} bytes`);
  return { argsz, index: withIndex ? buf.readUInt32LE(at + 8) : 0 };
}

/** DEVICE_GET_REGION_INFO: argsz, flags, index, cap_offset (u32), size, offset (u64). */
export interface RegionInfo {
  index: number;
  flags: number;
  size: number;
  offset: number;
}
export const REGION_INFO_SIZE = 32;
export const RegionInfoFlags = { READ: 1, WRITE: 2, MMAP: 4, CAPS: 8 } as const;

export function encodeRegionInfoReply(msgId: number, r: RegionInfo): Buffer {
  const b = allocReply(msgId, Command.DEVICE_GET_REGION_INFO, REGION_INFO_SIZE);
  b.writeUInt32LE(REGION_INFO_SIZE, HEADER_SIZE);
  b.writeUInt32LE(r.flags, HEADER_SIZE + 4);
  b.writeUInt32LE(r.index, HEADER_SIZE + 8);
  b.writeUInt32LE(0, HEADER_SIZE + 12);
  b.writeBigUInt64LE(BigInt(r.size), HEADER_SIZE + 16);
  b.writeBigUInt64LE(BigInt(r.offset), HEADER_SIZE + 24);
  return b;
}

/** DEVICE_GET_IRQ_INFO: argsz, flags, index, count (u32 each). */
export interface IrqInfo {
  index: number;
  flags: number;
  count: number;
}
export const IRQ_INFO_SIZE = 16;
export const IrqInfoFlags = { EVENTFD: 1, MASKABLE: 2, AUTOMASKED: 4, NORESIZE: 8 } as const;

export function encodeIrqInfoReply(msgId: number, i: IrqInfo): Buffer {
  return u32Reply(msgId, Command.DEVICE_GET_IRQ_INFO, [IRQ_INFO_SIZE, i.flags, i.index, i.count]);
}

function u32Reply(msgId: number, command: number, fields: number[]): Buffer {
  const b = allocReply(msgId, command, 4 * fields.length);
  fields.forEach((v, i) => b.writeUInt32LE(v >>> 0, HEADER_SIZE + 4 * i));
  return b;
}

/** DEVICE_SET_IRQS: argsz, flags, index, start, count (u32 each), then optional data. */
export interface IrqSet {
  argsz: number;
  flags: number;
  index: number;
  start: number;
  count: number;
}
export const IRQ_SET_SIZE = 20;

export function decodeIrqSet(buf: Buffer, at: number, len: number): IrqSet {
  need('DEVICE_SET_IRQS', len, IRQ_SET_SIZE);
  return {
    argsz: buf.readUInt32LE(at),
    flags: buf.readUInt32LE(at + 4),
    index: buf.readUInt32LE(at + 8),
    start: buf.readUInt32LE(at + 12),
    count: buf.readUInt32LE(at + 16),
  };
}

/** REGION_READ/WRITE: offset u64, region u32, count u32, then data (write request, read reply). */
export interface RegionAccess {
  offset: number;
  region: number;
  count: number;
}
export const REGION_RW_SIZE = 16;

/** Offsets past 2^53 cannot be a byte in any region we serve; they decode as Infinity. */
export function decodeRegionAccess(buf: Buffer, at: number, len: number, what: 'REGION_READ' | 'REGION_WRITE'): RegionAccess {
  need(what, len, REGION_RW_SIZE);
  const lo = buf.readUInt32LE(at);
  const hi = buf.readUInt32LE(at + 4);
  return {
    offset: hi < 0x200000 ? hi * 0x1_0000_0000 + lo : Infinity,
    region: buf.readUInt32LE(at + 8),
    count: buf.readUInt32LE(at + 12),
  };
}

export function encodeRegionAccess(a: RegionAccess, buf: Buffer, at: number): void {
  buf.writeBigUInt64LE(BigInt(a.offset), at);
  buf.writeUInt32LE(a.region, at + 8);
  buf.writeUInt32LE(a.count, at + 12);
}

/** A request payload too short or inconsistent for its command. */
export class PayloadError extends Error {
  override name = 'PayloadError';
  constructor(
    readonly command: string,
    detail: string,
  ) {
    super(`${command}: ${detail}`);
  }
}

function need(what: string, len: number, min: number): void {
  if (len < min) throw new PayloadError(what, `payload is ${len} bytes, needs ${min}`);
}

// ---------------------------------------------------------------------------
// Requests, as a client builds them (tests and benches use these)

export function encodeRequest(msgId: number, command: number, payload?: Buffer, flags = 0): Buffer {
  const len = payload?.length ?? 0;
  const b = Buffer.allocUnsafe(HEADER_SIZE + len);
  encodeHeader({ msgId, command, size: HEADER_SIZE + len, flags: flags & ~Flags.TYPE_MASK, error: 0 }, b);
  payload?.copy(b, HEADER_SIZE);
  return b;
}
