/**
 * A vfio-user device server on a unix socket, serving one DeviceModel to one
 * client (QEMU's vfio-user-pci) at a time.
 *
 * File descriptors. QEMU sends an fd with every DMA_MAP of fd-backed guest RAM
 * and eventfds with SET_IRQS, as SCM_RIGHTS ancillary data. Node's net module
 * reads a non-IPC unix stream socket with plain read(2), i.e. recvmsg(2)
 * without a control buffer. For such a read Linux's unix_stream_read_generic()
 * detaches the passed files from the skb and __scm_recv_common() finds no
 * msg_control, sets MSG_CTRUNC and calls scm_destroy(), which drops the file
 * references: the fds are never installed in this process, nothing leaks, and
 * QEMU's memory is not kept alive by us. We never need the fds (no DMA, no
 * interrupts), so this is the honest minimum: no native addon, no fd
 * juggling. tests/unit/vfio-user-fds.test.ts checks it on the running kernel:
 * /proc/self/fd does not grow over thousands of fd-carrying DMA_MAPs, and the
 * write end of a pipe passed to us is closed (its read end sees EOF) once the
 * message has been read. One consequence, also from the kernel: a read never
 * joins a message carrying fds with the next one, so each DMA_MAP costs one
 * read and one event-loop turn.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { withDeadline } from '../util/deadline.js';
import { listenPrivately } from '../util/private-socket.js';
import type { DeviceDescription } from './description.js';
import { DeviceModel, PciIrq, PciRegion, RegionAccessError } from './device-model.js';
import {
  Command,
  DEFAULT_CAPABILITIES,
  DEVICE_INFO_SIZE,
  DMA_UNMAP_SIZE,
  DeviceInfoFlags,
  DmaUnmapFlags,
  Errno,
  Flags,
  FrameReader,
  HEADER_SIZE,
  IRQ_INFO_SIZE,
  PayloadError,
  REGION_INFO_SIZE,
  REGION_RW_SIZE,
  VERSION_MAJOR,
  VERSION_MINOR,
  allocReply,
  capabilitiesJson,
  checkDmaMap,
  checkDmaUnmap,
  commandName,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeInfoRequest,
  decodeIrqSet,
  decodeRegionAccess,
  decodeVersion,
  encodeDeviceInfoReply,
  encodeErrorReply,
  encodeIrqInfoReply,
  encodeRegionInfoReply,
  encodeVersionReply,
  type Frame,
  type FrameProblem,
  type ServerCapabilities,
} from './protocol.js';

export interface VfioUserServerOptions {
  /** Where to listen; the file must not exist yet. close() removes it. */
  socketPath: string;
  device: DeviceModel | DeviceDescription;
  /** Connection events, errors and refusals, one line each (never per message). */
  log?: (line: string) => void;
  /** Overrides for the VERSION reply. */
  capabilities?: Partial<ServerCapabilities>;
  /** Replies queued for a client that does not read before the server stops reading it (default 4 MiB). */
  maxQueuedReplyBytes?: number;
  /** Per-message log lines (refusals, resets) passed to `log` per session before they are only counted (default 50). */
  logLinesPerSession?: number;
}

/** Counters over the server's life (all sessions). */
export interface ServerStats {
  connections: number;
  /** Connections closed at once because a session was already active. */
  refusedConnections: number;
  /** Requests handled, every command. */
  requests: number;
  /** Requests per command number (index = command). */
  byCommand: number[];
  versionHandshakes: number;
  dmaMaps: number;
  dmaMapBytes: number;
  dmaUnmaps: number;
  configReads: number;
  configWrites: number;
  barReads: number;
  barWrites: number;
  /** Writes with the No_reply flag (never answered). */
  postedWrites: number;
  setIrqs: number;
  /** DEVICE_RESET messages. */
  resets: number;
  /** FLRs and D3hot→D0 soft resets the guest started through config writes. */
  functionResets: number;
  errorReplies: number;
  /** Problems logged without a reply (posted requests, replies we never asked for). */
  unansweredProblems: number;
  /** Per-message log lines kept out of `log` once a session used its budget (still in recentLog). */
  suppressedLogLines: number;
  /** Times a session stopped reading its client because replies piled up unread. */
  backpressurePauses: number;
}

export interface ClientVersion {
  major: number;
  minor: number;
  /** The client's capabilities JSON, parsed ({} when it sent none). */
  capabilities: unknown;
}

export interface SessionEnd {
  /**
   * 'peer-closed': the client went away; 'server-closed': close() ended it; 'error': the socket failed;
   * 'unframeable': a header with a size below 16; 'oversized': a message larger than the server takes
   * (the stream could only be followed by reading up to 4 GiB for nothing).
   */
  reason: 'peer-closed' | 'server-closed' | 'error' | 'unframeable' | 'oversized';
  detail?: string;
  requests: number;
}

export interface VfioUserServer {
  readonly socketPath: string;
  readonly device: DeviceModel;
  readonly stats: ServerStats;
  /** The last client's VERSION, once a handshake happened. */
  readonly clientVersion: ClientVersion | undefined;
  readonly sessionActive: boolean;
  /** The most recent log lines (at most 200), whether or not a `log` was given. */
  recentLog(): string[];
  /** Resolves at the next (or a past, unclaimed) VERSION handshake. */
  waitForHandshake(ms: number): Promise<ClientVersion>;
  /** Resolves when the current session ends, or at once with the last end if none is active. */
  waitForSessionEnd(ms: number): Promise<SessionEnd>;
  /** Stops listening, drops the client, removes the socket file. */
  close(): Promise<void>;
}

const LOG_KEEP = 200;
const DEFAULT_MAX_QUEUED_REPLY_BYTES = 4 << 20;
const DEFAULT_LOG_LINES_PER_SESSION = 50;

export async function startVfioUserServer(opts: VfioUserServerOptions): Promise<VfioUserServer> {
  const device = opts.device instanceof DeviceModel ? opts.device : new DeviceModel(opts.device);
  const caps: ServerCapabilities = { ...DEFAULT_CAPABILITIES, ...opts.capabilities };
  const s = new ServerImpl(opts.socketPath, device, caps, opts.log, {
    maxQueuedReplyBytes: opts.maxQueuedReplyBytes ?? DEFAULT_MAX_QUEUED_REPLY_BYTES,
    logLinesPerSession: opts.logLinesPerSession ?? DEFAULT_LOG_LINES_PER_SESSION,
  });
  await s.listen();
  return s;
}

class ServerImpl implements VfioUserServer {
  readonly stats: ServerStats = {
    connections: 0,
    refusedConnections: 0,
    requests: 0,
    byCommand: new Array<number>(32).fill(0),
    versionHandshakes: 0,
    dmaMaps: 0,
    dmaMapBytes: 0,
    dmaUnmaps: 0,
    configReads: 0,
    configWrites: 0,
    barReads: 0,
    barWrites: 0,
    postedWrites: 0,
    setIrqs: 0,
    resets: 0,
    functionResets: 0,
    errorReplies: 0,
    unansweredProblems: 0,
    suppressedLogLines: 0,
    backpressurePauses: 0,
  };
  clientVersion: ClientVersion | undefined;
  private readonly server: Server;
  private session: Session | undefined;
  private lastEnd: SessionEnd | undefined;
  private readonly logLines: string[] = [];
  private handshakeWaiters: Array<(v: ClientVersion) => void> = [];
  private unclaimedHandshake: ClientVersion | undefined;
  private endWaiters: Array<(e: SessionEnd) => void> = [];
  private closed = false;
  private readonly name: string;
  readonly pgsize: number;

  constructor(
    readonly socketPath: string,
    readonly device: DeviceModel,
    readonly caps: ServerCapabilities,
    private readonly logSink: ((line: string) => void) | undefined,
    readonly limits: { maxQueuedReplyBytes: number; logLinesPerSession: number },
  ) {
    this.name = `vfio-user[${device.description.name}]`;
    // The smallest page size offered: DMA ranges must be aligned to it.
    this.pgsize = caps.pgsizes & -caps.pgsizes;
    if (!(this.pgsize > 0)) throw new Error(`${this.name}: capabilities.pgsizes ${caps.pgsizes} offers no page size`);
    this.server = createServer({ allowHalfOpen: false }, (sock) => this.accept(sock));
  }

  get sessionActive(): boolean {
    return this.session !== undefined;
  }

  listen(): Promise<void> {
    if (existsSync(this.socketPath)) {
      return Promise.reject(new Error(`${this.name}: socket path ${this.socketPath} already exists; use a fresh path in a private directory`));
    }
    return listenPrivately(this.server, this.socketPath, this.name).then(() => {
      this.server.on('error', (e) => this.log(`server error: ${e.message}`));
      this.log(`listening on ${this.socketPath}`);
    });
  }

  /** `toSink` false: kept in recentLog only (a per-message line past the session's budget). */
  log(line: string, toSink = true): void {
    const l = `${this.name}: ${line}`;
    this.logLines.push(l);
    if (this.logLines.length > LOG_KEEP) this.logLines.splice(0, this.logLines.length - LOG_KEEP);
    if (toSink) this.logSink?.(l);
  }

  recentLog(): string[] {
    return [...this.logLines];
  }

  waitForHandshake(ms: number): Promise<ClientVersion> {
    if (this.unclaimedHandshake) {
      const v = this.unclaimedHandshake;
      this.unclaimedHandshake = undefined;
      return Promise.resolve(v);
    }
    let resolver: ((v: ClientVersion) => void) | undefined;
    const p = new Promise<ClientVersion>((resolve) => {
      resolver = resolve;
      this.handshakeWaiters.push(resolve);
    });
    return withDeadline(p, ms, `${this.name}: VERSION handshake`, () => {
      this.handshakeWaiters = this.handshakeWaiters.filter((w) => w !== resolver);
      return this.recentLog().slice(-5).join('\n');
    });
  }

  waitForSessionEnd(ms: number): Promise<SessionEnd> {
    if (!this.session && this.lastEnd) return Promise.resolve(this.lastEnd);
    let resolver: ((e: SessionEnd) => void) | undefined;
    const p = new Promise<SessionEnd>((resolve) => {
      resolver = resolve;
      this.endWaiters.push(resolve);
    });
    return withDeadline(p, ms, `${this.name}: end of the client session`, () => {
      this.endWaiters = this.endWaiters.filter((w) => w !== resolver);
    });
  }

  handshake(v: ClientVersion): void {
    this.clientVersion = v;
    this.stats.versionHandshakes++;
    const waiters = this.handshakeWaiters;
    this.handshakeWaiters = [];
    if (waiters.length === 0) this.unclaimedHandshake = v;
    for (const w of waiters) w(v);
  }

  sessionEnded(sess: Session, end: SessionEnd): void {
    if (this.session !== sess) return;
    this.session = undefined;
    this.lastEnd = end;
    this.log(`session ended (${end.reason}${end.detail ? `: ${end.detail}` : ''}) after ${end.requests} requests`);
    const waiters = this.endWaiters;
    this.endWaiters = [];
    for (const w of waiters) w(end);
  }

  private accept(sock: Socket): void {
    this.stats.connections++;
    if (this.session || this.closed) {
      this.stats.refusedConnections++;
      this.log(this.closed ? 'connection refused: server is closing' : 'second connection refused: one client at a time');
      sock.on('error', () => {});
      sock.destroy();
      return;
    }
    this.log('client connected');
    this.session = new Session(this, sock);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.session?.end('server-closed');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    // net.Server unlinks its socket on close; make sure, but never remove a non-socket.
    try {
      if (lstatSync(this.socketPath).isSocket()) unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
  }
}

/**
 * Handles requests arriving on one connection. Replies are written as the
 * requests are read; once more than `maxQueuedReplyBytes` wait unread by the
 * client, the session stops reading (socket and FrameReader paused) until the
 * socket drains, so a client that never reads costs a bounded amount of memory
 * (it grew to gigabytes before).
 */
class Session {
  private readonly reader: FrameReader;
  private versioned = false;
  private requests = 0;
  private ended = false;
  private paused = false;
  /** Per-message log lines this session may still pass to the log sink. */
  private logBudget: number;
  private suppressed = 0;

  constructor(
    private readonly srv: ServerImpl,
    private readonly sock: Socket,
  ) {
    this.logBudget = srv.limits.logLinesPerSession;
    const maxMessage = HEADER_SIZE + REGION_RW_SIZE + srv.caps.max_data_xfer_size;
    this.reader = new FrameReader({ frame: (f) => this.onFrame(f), problem: (p) => this.problem(p) }, maxMessage);
    sock.on('data', (chunk: Buffer) => {
      if (!this.ended) this.withCork(() => this.reader.push(chunk));
    });
    sock.on('drain', () => this.unpause());
    sock.on('error', (e) => this.end('error', e.message));
    sock.on('close', () => this.end('peer-closed'));
  }

  /** One writev for all replies to the requests handled inside `f`. */
  private withCork(f: () => void): void {
    this.sock.cork();
    try {
      f();
    } finally {
      this.sock.uncork();
    }
  }

  private onFrame(f: Frame): void {
    if (this.ended) return;
    this.handle(f);
    if (!this.paused && !this.ended && this.sock.writableLength > this.srv.limits.maxQueuedReplyBytes) {
      this.paused = true;
      this.srv.stats.backpressurePauses++;
      this.reader.pause();
      this.sock.pause();
    }
  }

  private unpause(): void {
    if (!this.paused || this.ended) return;
    this.paused = false;
    this.withCork(() => this.reader.resume());
    if (!this.paused) this.sock.resume();
  }

  end(reason: SessionEnd['reason'], detail?: string): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.sock.destroyed) {
      // After a framing error, let the error reply out first; a client that
      // does not read it must not keep the socket: destroy at a deadline.
      if (reason === 'unframeable' || reason === 'oversized') {
        const timer = setTimeout(() => this.sock.destroy(), 1000);
        this.sock.end(() => {
          clearTimeout(timer);
          this.sock.destroy();
        });
        this.sock.resume(); // read (and drop) until the peer closes, so its close is seen
      } else this.sock.destroy();
    }
    if (this.suppressed) this.srv.log(`${this.suppressed} more per-message log lines of this session were not logged (the last ${LOG_KEEP} log lines are in recentLog)`);
    this.srv.sessionEnded(this, { reason, ...(detail ? { detail } : {}), requests: this.requests });
  }

  /** A line about one message: to the log sink while the session's budget lasts, then only counted. */
  private note(line: string): void {
    if (this.logBudget > 0) {
      this.logBudget--;
      this.srv.log(this.logBudget === 0 ? `${line} (further per-message lines of this session are counted, not logged)` : line);
      return;
    }
    this.suppressed++;
    this.srv.stats.suppressedLogLines++;
    this.srv.log(line, false);
  }

  private send(b: Buffer): void {
    if (!this.sock.destroyed && !this.ended) this.sock.write(b);
  }

  private problem(p: FrameProblem): void {
    const h = p.header;
    if (p.kind === 'bad-size') {
      this.srv.log(`malformed message ${h.msgId} (${commandName(h.command)}): size ${h.size} is below the 16-byte header; the stream cannot be followed, closing`);
      this.fail(h.msgId, h.command, h.flags, Errno.EINVAL);
      this.end('unframeable', `message ${h.msgId} declared size ${h.size}`);
      return;
    }
    this.srv.log(`message ${h.msgId} (${commandName(h.command)}) of ${h.size} bytes exceeds the limit of ${p.limit}; closing`);
    this.fail(h.msgId, h.command, h.flags, Errno.E2BIG);
    this.end('oversized', `message ${h.msgId} declared size ${h.size}, limit ${p.limit}`);
  }

  /** An error reply, unless the request asked for none (then only logged). */
  private fail(msgId: number, command: number, flags: number, errno: number): void {
    if ((flags & Flags.NO_REPLY) !== 0 || (flags & Flags.TYPE_MASK) === Flags.TYPE_REPLY) {
      this.srv.stats.unansweredProblems++;
      return;
    }
    this.srv.stats.errorReplies++;
    this.send(encodeErrorReply(msgId, command, errno));
  }

  private handle(f: Frame): void {
    const stats = this.srv.stats;
    const type = f.flags & Flags.TYPE_MASK;
    if (type === Flags.TYPE_REPLY) {
      // We never send requests (no DMA_READ/WRITE), so no reply is expected.
      stats.unansweredProblems++;
      this.note(`unexpected reply ${f.msgId} (${commandName(f.command)}) ignored`);
      return;
    }
    if (type !== Flags.TYPE_REQUEST) {
      this.note(`message ${f.msgId} (${commandName(f.command)}) has unknown type ${type}; refused`);
      this.fail(f.msgId, f.command, f.flags, Errno.EINVAL);
      return;
    }
    this.requests++;
    stats.requests++;
    if (f.command < stats.byCommand.length) stats.byCommand[f.command]!++;
    if (!this.versioned && f.command !== Command.VERSION) {
      this.note(`${commandName(f.command)} (message ${f.msgId}) before the VERSION handshake; refused`);
      this.fail(f.msgId, f.command, f.flags, Errno.EINVAL);
      return;
    }
    const len = f.size - HEADER_SIZE;
    try {
      const reply = this.dispatch(f, len);
      if (reply && (f.flags & Flags.NO_REPLY) === 0) this.send(reply);
    } catch (e) {
      const errno = e instanceof RegionAccessError ? e.errno : e instanceof PayloadError ? Errno.EINVAL : Errno.EIO;
      if (!(e instanceof RegionAccessError || e instanceof PayloadError)) this.note(`internal error on ${commandName(f.command)}: ${(e as Error).stack ?? e}`);
      else this.note(`${commandName(f.command)} (message ${f.msgId}) refused: ${(e as Error).message}`);
      this.fail(f.msgId, f.command, f.flags, errno);
    }
  }

  /** The reply for one request, or undefined for none. Throws PayloadError/RegionAccessError to refuse. */
  private dispatch(f: Frame, len: number): Buffer | undefined {
    const { buf, bodyStart: at } = f;
    const stats = this.srv.stats;
    const dev = this.srv.device;
    switch (f.command) {
      case Command.DMA_MAP: {
        const m = decodeDmaMap(buf, at, len);
        checkDmaMap(m, len, this.srv.pgsize);
        stats.dmaMaps++;
        stats.dmaMapBytes += Number(m.size);
        return allocReply(f.msgId, Command.DMA_MAP, 0);
      }
      case Command.DMA_UNMAP: {
        const u = decodeDmaUnmap(buf, at, len);
        checkDmaUnmap(u);
        if (u.flags & DmaUnmapFlags.GET_DIRTY_BITMAP) throw new PayloadError('DMA_UNMAP', 'dirty bitmaps were not negotiated');
        stats.dmaUnmaps++;
        // The spec: "The server responds with the original DMA entry in the request."
        const r = allocReply(f.msgId, Command.DMA_UNMAP, DMA_UNMAP_SIZE);
        buf.copy(r, HEADER_SIZE, at, at + DMA_UNMAP_SIZE);
        return r;
      }
      case Command.REGION_READ: {
        const { region, offset, count } = decodeRegionAccess(buf, at, len, 'REGION_READ');
        if (count > this.srv.caps.max_data_xfer_size) throw new RegionAccessError(Errno.E2BIG, `count ${count} exceeds max_data_xfer_size ${this.srv.caps.max_data_xfer_size}`);
        const r = allocReply(f.msgId, Command.REGION_READ, REGION_RW_SIZE + count);
        dev.readInto(region, offset, count, r, HEADER_SIZE + REGION_RW_SIZE);
        buf.copy(r, HEADER_SIZE, at, at + REGION_RW_SIZE);
        if (region === PciRegion.CONFIG) stats.configReads++;
        else stats.barReads++;
        return r;
      }
      case Command.REGION_WRITE: {
        const { region, offset, count } = decodeRegionAccess(buf, at, len, 'REGION_WRITE');
        if (len - REGION_RW_SIZE < count) throw new PayloadError('REGION_WRITE', `count ${count} but only ${len - REGION_RW_SIZE} data bytes`);
        const before = dev.functionResetCount;
        dev.write(region, offset, buf, at + REGION_RW_SIZE, count);
        if (region === PciRegion.CONFIG) stats.configWrites++;
        else stats.barWrites++;
        if (dev.functionResetCount !== before) {
          stats.functionResets++;
          this.note(`function reset by ${dev.lastFunctionReset === 'flr' ? 'FLR' : 'D3hot→D0'} (#${dev.functionResetCount})`);
        }
        if (f.flags & Flags.NO_REPLY) {
          stats.postedWrites++;
          return undefined;
        }
        const r = allocReply(f.msgId, Command.REGION_WRITE, REGION_RW_SIZE);
        buf.copy(r, HEADER_SIZE, at, at + REGION_RW_SIZE);
        return r;
      }
      case Command.VERSION:
        return this.version(f, len);
      case Command.DEVICE_GET_INFO:
        decodeInfoRequest(buf, at, len, 'DEVICE_GET_INFO', DEVICE_INFO_SIZE);
        return encodeDeviceInfoReply(f.msgId, { flags: DeviceInfoFlags.RESET | DeviceInfoFlags.PCI, numRegions: PciRegion.COUNT, numIrqs: PciIrq.COUNT });
      case Command.DEVICE_GET_REGION_INFO: {
        const { index } = decodeInfoRequest(buf, at, len, 'DEVICE_GET_REGION_INFO', REGION_INFO_SIZE);
        const info = dev.regionInfo(index);
        if (!info) throw new RegionAccessError(Errno.EINVAL, `no region ${index} (regions 0-${PciRegion.COUNT - 1})`);
        return encodeRegionInfoReply(f.msgId, info);
      }
      case Command.DEVICE_GET_IRQ_INFO: {
        const { index } = decodeInfoRequest(buf, at, len, 'DEVICE_GET_IRQ_INFO', IRQ_INFO_SIZE);
        const info = dev.irqInfo(index);
        if (!info) throw new RegionAccessError(Errno.EINVAL, `no IRQ index ${index} (0-${PciIrq.COUNT - 1})`);
        return encodeIrqInfoReply(f.msgId, info);
      }
      case Command.DEVICE_SET_IRQS: {
        const { index } = decodeIrqSet(buf, at, len);
        if (index >= PciIrq.COUNT) throw new RegionAccessError(Errno.EINVAL, `no IRQ index ${index}`);
        // Accepted and ignored: the device never interrupts; any eventfds
        // were already closed by the kernel (see the top of this file).
        stats.setIrqs++;
        return allocReply(f.msgId, Command.DEVICE_SET_IRQS, 0);
      }
      case Command.DEVICE_RESET:
        dev.reset();
        stats.resets++;
        this.note(`device reset (#${dev.resetCount})`);
        return allocReply(f.msgId, Command.DEVICE_RESET, 0);
      default:
        throw new RegionAccessError(Errno.ENOSYS, `${commandName(f.command)} is not supported by this server`);
    }
  }

  private version(f: Frame, len: number): Buffer {
    const v = decodeVersion(f.buf, f.bodyStart, len);
    if (v.major !== VERSION_MAJOR) throw new PayloadError('VERSION', `major version ${v.major} is not supported (only ${VERSION_MAJOR})`);
    let capabilities: unknown = {};
    if (v.json) {
      try {
        capabilities = JSON.parse(v.json);
      } catch (e) {
        throw new PayloadError('VERSION', `capabilities are not JSON: ${(e as Error).message}`);
      }
    }
    const minor = Math.min(v.minor, VERSION_MINOR);
    let reply = encodeVersionReply(f.msgId, { major: VERSION_MAJOR, minor, json: capabilitiesJson(this.srv.caps) });
    // QEMU reads the reply into its request's buffer and rejects a larger one:
    // fall back to no capabilities (the client's defaults), then to no data.
    if (reply.length > f.size) {
      this.srv.log(`VERSION reply (${reply.length} bytes) would exceed the request (${f.size}); sending no capabilities, so the client uses defaults`);
      reply = encodeVersionReply(f.msgId, { major: VERSION_MAJOR, minor, json: '{}' });
      if (reply.length > f.size) reply = encodeVersionReply(f.msgId, { major: VERSION_MAJOR, minor, json: '' });
    }
    this.versioned = true;
    this.srv.log(`VERSION ${v.major}.${v.minor} from client, capabilities ${v.json || '(none)'}`);
    this.srv.handshake({ major: v.major, minor: v.minor, capabilities });
    return reply;
  }
}
