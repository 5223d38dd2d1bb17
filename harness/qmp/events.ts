import { DeadlineError } from '../util/deadline.js';
import { scaled } from '../util/timeouts.js';
import { QmpDisconnectedError } from './errors.js';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
  /** Order of arrival on this connection, from 1. */
  seq: number;
}

/**
 * Events a listener keeps unread by default. A listener is for waiting on
 * what a command causes; one that nobody reads must not hold every event of a
 * long run (200k unread events held 46 MB).
 */
export const DEFAULT_MAX_QUEUED_EVENTS = 10_000;

export type EventFilter = {
  /** Event names to accept; all when absent. */
  names?: readonly string[];
  /** Further condition on the event; all when absent. */
  where?: (e: QmpEvent) => boolean;
};

/**
 * A listener with its own queue, after python's qemu.qmp: every matching event
 * that arrives after the listener was made is kept until read, so a waiter
 * registered before a command can never miss the event the command causes.
 * The queue is bounded: past `maxQueued` unread events the oldest is dropped
 * and counted, and a wait that fails says how many were dropped.
 */
export class EventListener implements AsyncIterable<QmpEvent> {
  private queue: QmpEvent[] = [];
  /** Index of the first unread event in `queue` (shifting a long array is O(n)). */
  private head = 0;
  private waiters: Array<{ resolve: (e: QmpEvent) => void; reject: (err: Error) => void }> = [];
  private endedBy: Error | undefined;
  /** Matching events dropped because the queue was full. */
  dropped = 0;

  constructor(
    private readonly hub: EventHub,
    readonly filter: EventFilter,
    readonly maxQueued = DEFAULT_MAX_QUEUED_EVENTS,
  ) {
    if (!(Number.isInteger(maxQueued) && maxQueued > 0)) throw new RangeError(`maxQueued must be a positive integer, got ${maxQueued}`);
  }

  /** Called by the hub. */
  offer(e: QmpEvent): void {
    if (this.filter.names && !this.filter.names.includes(e.event)) return;
    if (this.filter.where && !this.filter.where(e)) return;
    const w = this.waiters.shift();
    if (w) return w.resolve(e);
    if (this.queue.length - this.head >= this.maxQueued) {
      this.head++;
      this.dropped++;
    }
    this.queue.push(e);
    this.compact();
  }

  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private shift(): QmpEvent | undefined {
    if (this.head >= this.queue.length) return undefined;
    const e = this.queue[this.head++];
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else this.compact();
    return e;
  }

  /** Called by the hub when the connection ends. */
  end(err: Error): void {
    this.endedBy = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  /** Events received and not yet read. */
  get pending(): readonly QmpEvent[] {
    return this.head === 0 ? this.queue : this.queue.slice(this.head);
  }

  /** The next matching event, or a DeadlineError naming what was awaited. */
  next(timeoutMs: number): Promise<QmpEvent> {
    const queued = this.shift();
    if (queued) return Promise.resolve(queued);
    if (this.endedBy) return Promise.reject(this.endedBy);
    return new Promise<QmpEvent>((resolve, reject) => {
      const waiter = {
        resolve: (e: QmpEvent) => {
          clearTimeout(timer);
          resolve(e);
        },
        reject: (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      const limit = scaled(timeoutMs);
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new DeadlineError(`waiting for QMP event ${this.describe()}`, limit, this.droppedNote()));
      }, limit);
      this.waiters.push(waiter);
    });
  }

  /** Stops listening; queued events are dropped. */
  close(): void {
    this.hub.remove(this);
    this.end(new QmpDisconnectedError('event listener closed'));
  }

  /** Why an awaited event may be missing, when events were dropped. */
  droppedNote(): string | undefined {
    if (this.dropped === 0) return undefined;
    return `this listener dropped ${this.dropped} event(s), oldest first: more than ${this.maxQueued} were left unread`;
  }

  describe(): string {
    return this.filter.names ? this.filter.names.join('|') : '(any)';
  }

  async *[Symbol.asyncIterator](): AsyncIterator<QmpEvent> {
    for (;;) {
      try {
        yield await this.next(2 ** 31 - 1);
      } catch (e) {
        if (e instanceof QmpDisconnectedError) return;
        throw e;
      }
    }
  }
}

/** Fans events out to listeners; keeps a short history for diagnostics. */
export class EventHub {
  private listeners = new Set<EventListener>();
  private seq = 0;
  readonly history: QmpEvent[] = [];
  // Short: the soak (harness/lab/soak.ts) saw 1000 events of history hold 0.6 KiB of heap per
  // hot-plug cycle (one DEVICE_DELETED each) for its first 1000 cycles.
  private static readonly historyMax = 64;
  private endedBy: Error | undefined;

  constructor(readonly maxQueuedPerListener = DEFAULT_MAX_QUEUED_EVENTS) {}

  listen(filter: EventFilter = {}, maxQueued = this.maxQueuedPerListener): EventListener {
    const l = new EventListener(this, filter, maxQueued);
    if (this.endedBy) l.end(this.endedBy);
    else this.listeners.add(l);
    return l;
  }

  remove(l: EventListener): void {
    this.listeners.delete(l);
  }

  /** Fans out an event whose shape the protocol layer has checked (grammar.ts). */
  dispatch(msg: { event: string; data?: Record<string, unknown>; timestamp?: QmpEvent['timestamp'] | undefined }): QmpEvent {
    const e: QmpEvent = {
      event: msg.event,
      data: msg.data ?? {},
      timestamp: msg.timestamp ?? { seconds: 0, microseconds: 0 },
      seq: ++this.seq,
    };
    this.history.push(e);
    if (this.history.length > EventHub.historyMax) this.history.splice(0, this.history.length - EventHub.historyMax);
    for (const l of this.listeners) l.offer(e);
    return e;
  }

  end(err: Error): void {
    this.endedBy = err;
    for (const l of this.listeners) l.end(err);
    this.listeners.clear();
  }
}
