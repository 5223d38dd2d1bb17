/**
 * Follows a trace file that QEMU is still writing: records arrive as lines are
 * completed, and a test can wait for one with a deadline. New data is noticed
 * through fs.watch where it works and a short read interval otherwise (watch
 * events are not delivered on every filesystem, e.g. 9p in the virtual lab).
 */
import { watch, type FSWatcher } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { withDeadline } from '../util/deadline.js';
import type { TraceFormats } from './formats.js';
import { TraceStreamParser, type Diagnostic, type EventRecord, type ParsedLine, type TraceRecord } from './parse.js';

export interface FollowOptions {
  /** How often to look for new data when no watch event comes (ms). */
  intervalMs?: number;
}

interface Waiter {
  pred: (r: TraceRecord) => boolean;
  resolve: (r: TraceRecord) => void;
  reject: (e: Error) => void;
}

export class TraceFollower {
  readonly records: TraceRecord[] = [];
  readonly diagnostics: Diagnostic[] = [];
  private readonly parser: TraceStreamParser;
  private readonly decoder = new StringDecoder('utf8');
  private readonly buf = Buffer.allocUnsafe(1 << 16);
  private readonly waiters = new Set<Waiter>();
  private readonly listeners = new Set<(p: ParsedLine) => void>();
  private fh: FileHandle | undefined;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout;
  private position = 0;
  private reading: Promise<void> | undefined;
  private again = false;
  private closed = false;
  /** A read error (other than the file not existing yet); fails every wait. */
  private error: Error | undefined;

  private constructor(
    readonly path: string,
    formats: TraceFormats,
    opts: FollowOptions,
  ) {
    this.parser = new TraceStreamParser(formats, (p) => this.accept(p));
    this.timer = setInterval(() => this.pokeInBackground(), opts.intervalMs ?? 20);
    this.timer.unref();
  }

  /** Starts following `path` from its beginning; the file need not exist yet. */
  static start(path: string, formats: TraceFormats, opts: FollowOptions = {}): TraceFollower {
    const f = new TraceFollower(path, formats, opts);
    f.pokeInBackground();
    return f;
  }

  /** Called for every parsed line from now on; returns an unsubscribe function. */
  onLine(listener: (p: ParsedLine) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The first record (already seen or still to come) that satisfies `pred`. */
  async waitForRecord(pred: (r: TraceRecord) => boolean, timeoutMs: number, what = 'trace record'): Promise<TraceRecord> {
    await this.poke();
    if (this.error) throw this.error;
    const seen = this.records.find(pred);
    if (seen) return seen;
    let waiter: Waiter | undefined;
    const found = new Promise<TraceRecord>((resolve, reject) => {
      waiter = { pred, resolve, reject };
      this.waiters.add(waiter);
    });
    try {
      return await withDeadline(found, timeoutMs, `waiting for ${what} in ${this.path}`, () => this.tail());
    } finally {
      this.waiters.delete(waiter!);
    }
  }

  /** Waits for an event by name, optionally with a condition on its fields. */
  async waitForEvent(
    event: string,
    timeoutMs: number,
    where: (fields: EventRecord['fields']) => boolean = () => true,
  ): Promise<EventRecord> {
    const r = await this.waitForRecord((x) => x.kind === 'event' && x.event === event && where(x.fields), timeoutMs, event);
    return r as EventRecord;
  }

  /** Reads what is left, parses a final unterminated line, and stops following. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.poke();
    this.closed = true;
    clearInterval(this.timer);
    this.watcher?.close();
    this.parser.push(this.decoder.end());
    this.parser.end();
    await this.fh?.close();
    this.fh = undefined;
  }

  /** The last lines seen, for timeout messages. */
  tail(n = 5): string {
    const last = this.records.slice(-n).map((r) => `  ${r.line}: ${r.raw}`);
    return last.length ? `last lines:\n${last.join('\n')}` : `nothing read from ${this.path} yet`;
  }

  private accept(p: ParsedLine): void {
    if (p.kind === 'diagnostic') this.diagnostics.push(p);
    else {
      this.records.push(p);
      for (const w of this.waiters) {
        if (w.pred(p)) {
          this.waiters.delete(w);
          w.resolve(p);
        }
      }
    }
    for (const l of this.listeners) l(p);
  }

  private pokeInBackground(): void {
    this.poke().catch((e: Error) => {
      this.error ??= new Error(`reading trace ${this.path}: ${e.message}`);
      for (const w of this.waiters) w.reject(this.error);
      this.waiters.clear();
    });
  }

  /** Reads until EOF; concurrent calls coalesce into one more pass. */
  private poke(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = (async () => {
      try {
        do {
          this.again = false;
          await this.readToEof();
        } while (this.again);
      } finally {
        this.reading = undefined;
      }
    })();
    return this.reading;
  }

  private async readToEof(): Promise<void> {
    if (!this.fh) {
      try {
        this.fh = await open(this.path, 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      try {
        this.watcher = watch(this.path, () => this.pokeInBackground());
        this.watcher.on('error', () => this.watcher?.close());
        this.watcher.unref();
      } catch {
        // The interval read still runs.
      }
    }
    for (;;) {
      const { bytesRead } = await this.fh.read(this.buf, 0, this.buf.length, this.position);
      if (bytesRead === 0) return;
      this.position += bytesRead;
      this.parser.push(this.decoder.write(this.buf.subarray(0, bytesRead)));
    }
  }
}
