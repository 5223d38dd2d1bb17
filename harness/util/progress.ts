/**
 * Live progress for waits longer than a few seconds (a guest booting, L1's
 * whole suite run): a heartbeat saying how long it has waited, what for, and
 * the last thing seen (a console line, the last result). On a terminal it is
 * one status line rewritten in place; in CI (no TTY, or CI=true) a plain line
 * at most every 30 s, so a log stays readable and a hung job still shows
 * where it hangs.
 */

export const HEARTBEAT_MS = 30_000;

export type ProgressMode = 'tty' | 'lines';

/** A terminal gets the status line; CI and pipes get plain lines. */
export function progressMode(stream: { isTTY?: boolean } = process.stderr, env: NodeJS.ProcessEnv = process.env): ProgressMode {
  return stream.isTTY && !env.CI ? 'tty' : 'lines';
}

/** 95000 → "1m35s". */
export function formatElapsed(ms: number): string {
  const s = Math.floor(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

export interface HeartbeatOptions {
  /** What was seen last (a console line); cut to one line of 160 characters. */
  last?: () => string | undefined;
  /** The label of `last` in the line (default "last console line"). */
  lastLabel?: string;
  /** Between plain lines (default 30 s). */
  everyMs?: number;
  mode?: ProgressMode;
  write?: (s: string) => void;
  now?: () => number;
}

/** The heartbeat's text: "[heartbeat] 1m30s waiting for X; last console line: Y". */
export function heartbeatLine(what: string, elapsedMs: number, last?: string, lastLabel = 'last console line'): string {
  const seen = last
    ?.split('\n')
    .filter((l) => l.trim())
    .at(-1)
    ?.trim();
  const cut = seen && seen.length > 160 ? `${seen.slice(0, 157)}...` : seen;
  return `[heartbeat] ${formatElapsed(elapsedMs)} waiting for ${what}${cut ? `; ${lastLabel}: ${cut}` : ''}`;
}

/**
 * Starts a heartbeat for `what`; the returned function stops it (and clears
 * the status line). Nothing is printed for a wait shorter than the first
 * interval, so quick waits stay silent.
 */
export function heartbeat(what: string, o: HeartbeatOptions = {}): () => void {
  const mode = o.mode ?? progressMode();
  const write = o.write ?? ((s: string) => void process.stderr.write(s));
  const now = o.now ?? Date.now;
  const every = o.everyMs ?? HEARTBEAT_MS;
  const t0 = now();
  let shown = false;
  const line = (): string => heartbeatLine(what, now() - t0, o.last?.(), o.lastLabel);
  // A terminal's status line may move every second; plain lines come at most every `every`.
  const tick = mode === 'tty' ? Math.min(1000, every) : every;
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    timer = setTimeout(() => {
      if (mode === 'tty') {
        if (now() - t0 >= Math.min(every, 5000)) {
          write(`\r\x1b[K${line().slice(0, 200)}`);
          shown = true;
        }
      } else write(`${line()}\n`);
      arm();
    }, tick);
    timer.unref();
  };
  arm();
  return () => {
    clearTimeout(timer);
    if (shown) write('\r\x1b[K');
  };
}

/** Runs `fn` under a heartbeat for `what`, stopped however `fn` ends. */
export async function withHeartbeat<T>(what: string, fn: () => Promise<T>, o: HeartbeatOptions = {}): Promise<T> {
  const stop = heartbeat(what, o);
  try {
    return await fn();
  } finally {
    stop();
  }
}
