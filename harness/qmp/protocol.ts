import { DeadlineError, withDeadline } from '../util/deadline.js';
import { scaled } from '../util/timeouts.js';
import { QmpCommandError, QmpDisconnectedError, QmpNegotiationError, QmpProtocolError } from './errors.js';
import { DEFAULT_MAX_QUEUED_EVENTS, EventHub, type EventFilter, type EventListener, type QmpEvent } from './events.js';
import { DEFAULT_MAX_MESSAGE_BYTES, JsonObjectSplitter, encode, quote, show, type QmpMessage } from './framing.js';
import { classify, type ServerMessage } from './grammar.js';
import type { Transcript } from './transcript.js';
import type { Transport } from './transport.js';

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface ConnectionOptions {
  /** Deadline for the greeting and for capability negotiation. */
  greetingTimeoutMs?: number;
  /** Enable out-of-band execution when QEMU offers it (default true). */
  oob?: boolean;
  /** Default deadline of each command. */
  commandTimeoutMs?: number;
  transcript?: Transcript;
  /** Largest message accepted from the peer (default DEFAULT_MAX_MESSAGE_BYTES); a larger one is a QmpMessageTooLargeError. */
  maxMessageBytes?: number;
  /** Unread events each listener keeps before dropping the oldest (default DEFAULT_MAX_QUEUED_EVENTS). */
  maxQueuedEvents?: number;
  /**
   * Asked once the connection is gone, so that the error every waiter gets can
   * say why (a Machine answers with QEMU's exit status and stderr tail).
   */
  describeDisconnect?: () => Promise<string | undefined>;
}

export interface ExecuteOptions {
  timeoutMs?: number;
  /** Send as `exec-oob` (needs oob negotiated). */
  oob?: boolean;
}

interface Pending {
  command: string;
  args: unknown;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * QMP over any Transport: greeting, negotiation, ids, replies matched by id
 * with many commands in flight, events to listeners. Knows nothing of QEMU
 * processes; the Machine tells it, through describeDisconnect, what happened
 * when the pipe breaks.
 */
export class QmpConnection {
  readonly events: EventHub;
  private pending = new Map<string, Pending>();
  private nextId = 1;
  /** Why the connection ended: a disconnect, or the peer breaking protocol. */
  private closedBy: Error | undefined;
  private closing = false;
  /** True once the transport reported its close and every waiter was told. */
  private transportGone = false;
  private rawListeners = new Set<(msg: QmpMessage, raw: string) => void>();
  private greetingWaiter: ((msg: QmpMessage) => void) | undefined;
  private readonly commandTimeoutMs: number;
  private closeWaiters: Array<() => void> = [];
  greeting!: QmpGreeting;
  /** True once exec-oob may be used. */
  oobEnabled = false;

  private constructor(
    private readonly transport: Transport,
    private readonly opts: ConnectionOptions,
  ) {
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
    this.events = new EventHub(opts.maxQueuedEvents ?? DEFAULT_MAX_QUEUED_EVENTS);
    const splitter = new JsonObjectSplitter((msg, raw) => this.onMessage(msg, raw), opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES);
    transport.onData((chunk) => {
      if (this.closedBy) return; // bytes still in flight after a protocol error
      try {
        splitter.push(chunk);
      } catch (e) {
        this.protocolError(e as Error);
      }
    });
    transport.onClose((err) => void this.onTransportClosed(err));
  }

  /** Reads the greeting, checks it, negotiates capabilities. */
  static async open(transport: Transport, opts: ConnectionOptions = {}): Promise<QmpConnection> {
    const conn = new QmpConnection(transport, opts);
    const timeoutMs = opts.greetingTimeoutMs ?? 10_000;
    try {
      const greeting = await withDeadline(conn.nextGreeting(), timeoutMs, `QMP greeting from ${transport.peer}`);
      conn.greeting = checkGreeting(greeting);
      const wantOob = (opts.oob ?? true) && conn.greeting.capabilities.includes('oob');
      try {
        await conn.execute('qmp_capabilities', wantOob ? { enable: ['oob'] } : undefined, { timeoutMs });
      } catch (e) {
        if (e instanceof QmpCommandError || e instanceof DeadlineError) {
          throw new QmpNegotiationError(`qmp_capabilities failed on ${transport.peer}: ${e.message}`);
        }
        throw e;
      }
      conn.oobEnabled = wantOob;
      return conn;
    } catch (e) {
      transport.close();
      throw e;
    }
  }

  get peer(): string {
    return this.transport.peer;
  }

  get isOpen(): boolean {
    return !this.closedBy;
  }

  /** Runs a command; resolves with its `return` value, rejects with a typed error. */
  execute<T = unknown>(command: string, args?: object, opts: ExecuteOptions = {}): Promise<T> {
    if (this.closedBy) return Promise.reject(this.closedBy);
    if (opts.oob && !this.oobEnabled) {
      return Promise.reject(new QmpProtocolError(`exec-oob ${command}: out-of-band execution was not negotiated`));
    }
    const id = `h${this.nextId++}`;
    const msg: QmpMessage = { [opts.oob ? 'exec-oob' : 'execute']: command, id };
    if (args !== undefined) msg.arguments = args;
    const timeoutMs = scaled(opts.timeoutMs ?? this.commandTimeoutMs);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DeadlineError(`QMP ${command} (id ${id}) on ${this.peer}`, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, args, resolve: resolve as (v: unknown) => void, reject, timer });
      this.sendRaw(encode(msg));
    });
  }

  /**
   * Listens for events; see EventListener. Register before the command that
   * causes them. `maxQueued` overrides the connection's maxQueuedEvents.
   */
  listen(filter: EventFilter = {}, maxQueued?: number): EventListener {
    return this.events.listen(filter, maxQueued);
  }

  /** Runs `command` and waits for the first event that matches `filter`, which cannot be missed. */
  async executeAndWait(
    command: string,
    args: object | undefined,
    filter: EventFilter,
    timeoutMs = this.commandTimeoutMs,
  ): Promise<{ result: unknown; event: QmpEvent }> {
    const listener = this.listen(filter);
    try {
      const result = await this.execute(command, args, { timeoutMs });
      const event = await listener.next(timeoutMs);
      return { result, event };
    } finally {
      listener.close();
    }
  }

  /** Sees every message in and out (for bridges and tests). */
  tap(cb: (msg: QmpMessage, raw: string) => void): () => void {
    this.rawListeners.add(cb);
    return () => this.rawListeners.delete(cb);
  }

  /**
   * Closes the connection; pending commands reject as disconnected. Always
   * releases the transport, also after the peer broke protocol (the
   * connection is then failed but its socket may still be open).
   */
  async close(): Promise<void> {
    if (this.transportGone) return;
    this.closing = true;
    const closed = new Promise<void>((r) => this.closeWaiters.push(r));
    this.transport.close();
    await withDeadline(closed, 5000, `closing QMP connection to ${this.peer}`);
  }

  /** A peer that does not speak QMP: everyone waiting learns why, and the transport goes. */
  private protocolError(e: Error): void {
    if (!this.closedBy) this.opts.transcript?.note(`protocol error: ${e.message}`);
    void this.fail(e);
    this.transport.close();
  }

  private sendRaw(raw: string): void {
    this.opts.transcript?.record('out', raw);
    this.transport.send(raw);
  }

  private nextGreeting(): Promise<QmpMessage> {
    return new Promise((resolve, reject) => {
      this.greetingWaiter = resolve;
      this.closeWaiters.push(() => reject(this.closedBy ?? new QmpDisconnectedError('closed before greeting')));
    });
  }

  private onMessage(msg: QmpMessage, raw: string): void {
    if (this.closedBy) return; // the rest of a read after a protocol error
    this.opts.transcript?.record('in', raw);
    for (const cb of this.rawListeners) cb(msg, raw);
    if (this.greetingWaiter) {
      const w = this.greetingWaiter;
      this.greetingWaiter = undefined;
      w(msg); // checked by checkGreeting, which names what is missing
      return;
    }
    let m: ServerMessage;
    try {
      m = classify(msg, raw);
    } catch (e) {
      return this.protocolError(e as Error);
    }
    if (m.kind === 'greeting') return this.protocolError(new QmpProtocolError(`a second QMP greeting: ${quote(raw)}`));
    if (m.kind === 'event') {
      this.events.dispatch(m);
      return;
    }
    const id = m.id;
    if (typeof id !== 'string' || !this.pending.has(id)) {
      // A reply nobody waits for: either a command that ran past its deadline
      // (recorded in the transcript, harmless) or a peer that breaks protocol.
      if (typeof id === 'string' && id.startsWith('h') && Number(id.slice(1)) < this.nextId) return;
      return this.protocolError(new QmpProtocolError(`QMP reply with unknown id ${id === undefined ? "(none)" : show(id)}: ${quote(raw)}`));
    }
    const p = this.pending.get(id)!;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (m.kind === 'return') p.resolve(m.value);
    else p.reject(new QmpCommandError(p.command, m.errorClass, m.desc, p.args));
  }

  private async onTransportClosed(err?: Error): Promise<void> {
    let detail: string | undefined;
    if (!this.closing && this.opts.describeDisconnect) {
      try {
        detail = await withDeadline(this.opts.describeDisconnect(), 3000, 'describing the disconnect');
      } catch (e) {
        detail = `(no detail: ${(e as Error).message})`;
      }
    }
    const reason = this.closing
      ? `QMP connection to ${this.peer} closed by the harness`
      : `QMP connection to ${this.peer} lost${err ? ` (${err.message})` : ' (EOF)'}`;
    await this.fail(new QmpDisconnectedError(reason, detail));
    this.transportGone = true;
    for (const w of this.closeWaiters.splice(0)) w();
  }

  /** Rejects everything that waits, at once, with one error. */
  private async fail(err: Error): Promise<void> {
    this.closedBy ??= err;
    const disconnected = err instanceof QmpDisconnectedError ? err : new QmpDisconnectedError(err.message);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
    this.events.end(disconnected);
  }
}

function checkGreeting(msg: QmpMessage): QmpGreeting {
  const qmp = msg.QMP as Partial<QmpGreeting> | undefined;
  const v = qmp?.version?.qemu;
  if (!qmp || !v || typeof v.major !== 'number' || !Array.isArray(qmp.capabilities)) {
    throw new QmpProtocolError(`not a QMP greeting: ${show(msg)}`);
  }
  return qmp as QmpGreeting;
}
