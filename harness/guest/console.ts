import { DeadlineError } from '../util/deadline.js';
import { scaled } from '../util/timeouts.js';

/**
 * Where console text comes from: a Machine's ChardevStream (harness/qemu/
 * chardev.ts) fits, and so does anything else with these members.
 */
export interface ConsoleSource {
  onData(cb: (text: string) => void): () => void;
  onClose(cb: () => void): () => void;
  tail(maxChars?: number): string;
  readonly isClosed: boolean;
  /** The file the full log is written to (the test's artifact). */
  readonly logPath?: string;
}

export interface ConsoleMatch {
  /** The regular expression's match (for a string pattern, the string). */
  match: RegExpExecArray;
  /** Offset of the match in the console text since the Console was made. */
  index: number;
  /** The whole console line the match is on. */
  line: string;
  /** Milliseconds since the Console was made. */
  atMs: number;
}

/** waitFor() ran past its deadline; the message has the console tail. */
export class ConsoleTimeoutError extends DeadlineError {
  override name = 'ConsoleTimeoutError';
  constructor(
    readonly pattern: string,
    ms: number,
    readonly consoleTail: string,
    logPath: string | undefined,
  ) {
    super(`console pattern ${pattern}`, ms, consoleDetail(consoleTail, logPath));
  }
}

/** The console closed (QEMU exited or the machine was shut down) before the pattern came. */
export class ConsoleClosedError extends Error {
  override name = 'ConsoleClosedError';
  constructor(
    readonly pattern: string,
    readonly consoleTail: string,
    logPath: string | undefined,
  ) {
    super(`console closed before pattern ${pattern} appeared\n${consoleDetail(consoleTail, logPath)}`);
  }
}

function consoleDetail(tail: string, logPath: string | undefined): string {
  const body = tail
    .trimEnd()
    .split('\n')
    .map((l) => `    | ${l}`)
    .join('\n');
  return `  console tail:\n${body || '    (nothing on the console)'}${logPath ? `\n  full console log: ${logPath}` : ''}`;
}

function describePattern(p: string | RegExp): string {
  return typeof p === 'string' ? JSON.stringify(p) : String(p);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export interface WaitOptions {
  /**
   * Where to search from: 'cursor' (default) is just after the previous
   * match, so successive milestones are found in order; 'start' is all the
   * text this Console has; a number is an offset from an earlier match.
   */
  from?: 'cursor' | 'start' | number;
}

/**
 * A serial console as milestones: everything the guest printed (the source
 * keeps the full log as an artifact), and waitFor(pattern) with a deadline,
 * whose failure shows the console's last lines. Text printed before the
 * Console was made is seeded from the source's tail, so a milestone that came
 * early is still found.
 */
export class Console {
  private text = '';
  /** Characters dropped from the front of `text` to bound memory. */
  private dropped = 0;
  private cursor = 0;
  private readonly started = Date.now();
  private readonly waiters = new Set<() => void>();
  private readonly unsubscribe: Array<() => void> = [];
  private static readonly maxChars = 8 * 1024 * 1024;

  constructor(readonly source: ConsoleSource) {
    this.text = source.tail(64 * 1024);
    this.unsubscribe.push(
      source.onData((t) => {
        this.text += t;
        if (this.text.length > Console.maxChars) {
          const cut = this.text.length - Console.maxChars / 2;
          this.text = this.text.slice(cut);
          this.dropped += cut;
        }
        for (const w of [...this.waiters]) w();
      }),
      source.onClose(() => {
        for (const w of [...this.waiters]) w();
      }),
    );
  }

  get logPath(): string | undefined {
    return this.source.logPath;
  }

  /** All text kept (up to the last 8 MiB). */
  get all(): string {
    return this.text;
  }

  /** The last `lines` lines, for messages. */
  tail(lines = 40): string {
    return this.text.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /**
   * Resolves at the first match of `pattern` at or after the start position
   * (see WaitOptions.from); rejects with ConsoleTimeoutError after
   * `timeoutMs`, or ConsoleClosedError if the console closes first.
   */
  waitFor(pattern: string | RegExp, unscaledMs: number, opts: WaitOptions = {}): Promise<ConsoleMatch> {
    const timeoutMs = scaled(unscaledMs);
    const re =
      typeof pattern === 'string' ? new RegExp(escapeRegExp(pattern)) : new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    const from = opts.from === 'start' ? this.dropped : opts.from === undefined || opts.from === 'cursor' ? this.cursor : opts.from;
    const what = describePattern(pattern);
    return new Promise<ConsoleMatch>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        this.waiters.delete(check);
        clearTimeout(timer);
      };
      const check = (): void => {
        const start = Math.max(0, from - this.dropped);
        const m = re.exec(this.text.slice(start));
        if (m) {
          done();
          const local = start + m.index;
          const lineStart = this.text.lastIndexOf('\n', local) + 1;
          const nl = this.text.indexOf('\n', local + m[0].length);
          const line = this.text.slice(lineStart, nl < 0 ? undefined : nl).replace(/\r$/, '');
          const index = this.dropped + local;
          this.cursor = Math.max(this.cursor, index + m[0].length);
          resolve({ match: m, index, line, atMs: Date.now() - this.started });
        } else if (this.source.isClosed) {
          done();
          reject(new ConsoleClosedError(what, this.tail(), this.logPath));
        }
      };
      timer = setTimeout(() => {
        done();
        reject(new ConsoleTimeoutError(what, timeoutMs, this.tail(), this.logPath));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  /** Stops listening (the source and its log file stay as they are). */
  detach(): void {
    for (const u of this.unsubscribe.splice(0)) u();
  }
}
