import { DeadlineError } from '../util/deadline.js';
import { QmpDisconnectedError } from './errors.js';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
  /** Order of arrival on this connection, from 1. */
  seq: number;
}

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
 */
export class EventListener implements AsyncIterable<QmpEvent> {
  private queue: QmpEvent[] = [];
  private waiters: Array<{ resolve: (e: QmpEvent) => void; reject: (err: Error) => void }> = [];
  private endedBy: Error | undefined;

  constructor(
    private readonly hub: EventHub,
    readonly filter: EventFilter,
  ) {}

  /** Called by the hub. */
  offer(e: QmpEvent): void {
    if (this.filter.names && !this.filter.names.includes(e.event)) return;
    if (this.filter.where && !this.filter.where(e)) return;
    const w = this.waiters.shift();
    if (w) w.resolve(e);
    else this.queue.push(e);
  }

  /** Called by the hub when the connection ends. */
  end(err: Error): void {
    this.endedBy = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  /** Events received and not yet read. */
  get pending(): readonly QmpEvent[] {
    return this.queue;
  }

  /** The next matching event, or a DeadlineError naming what was awaited. */
  next(timeoutMs: number): Promise<QmpEvent> {
    const queued = this.queue.shift();
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
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new DeadlineError(`waiting for QMP event ${this.describe()}`, timeoutMs));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Stops listening; queued events are dropped. */
  close(): void {
    this.hub.remove(this);
    this.end(new QmpDisconnectedError('event listener closed'));
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
  private static readonly historyMax = 1000;
  private endedBy: Error | undefined;

  listen(filter: EventFilter = {}): EventListener {
    const l = new EventListener(this, filter);
    if (this.endedBy) l.end(this.endedBy);
    else this.listeners.add(l);
    return l;
  }

  remove(l: EventListener): void {
    this.listeners.delete(l);
  }

  dispatch(msg: Record<string, unknown>): QmpEvent {
    const e: QmpEvent = {
      event: String(msg.event),
      data: (msg.data as Record<string, unknown>) ?? {},
      timestamp: (msg.timestamp as QmpEvent['timestamp']) ?? { seconds: 0, microseconds: 0 },
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
