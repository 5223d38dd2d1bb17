/**
 * Helpers shared by the protocol fuzz tests: a seeded generator (a failure is
 * replayed with its seed), chunking, and the process-level counts the tests
 * assert on (open fds, heap after a full GC, uncaught errors).
 */
import { collectGarbage, fdsOf } from '../../harness/util/process-stats.js';

/** mulberry32: small, fast, and the same sequence for a seed on every host. */
export class Rng {
  private s: number;
  constructor(readonly seed: number) {
    this.s = seed >>> 0;
  }
  /** [0, 1) */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(0, 255);
    return b;
  }
  /** `b` cut at random places into 1 to `maxPieces` pieces. */
  split(b: Buffer, maxPieces: number): Buffer[] {
    const cuts = new Set<number>();
    const n = this.int(0, Math.min(maxPieces - 1, Math.max(0, b.length - 1)));
    for (let i = 0; i < n; i++) cuts.add(this.int(1, b.length - 1));
    const at = [0, ...[...cuts].sort((x, y) => x - y), b.length];
    return at.slice(1).map((end, i) => b.subarray(at[i]!, end));
  }
}

/** The seed: $FUZZ_SEED when set (to replay a failure), else the test's fixed one. */
export function fuzzSeed(fallback: number): number {
  const env = process.env.FUZZ_SEED;
  if (env === undefined || env === '') return fallback;
  const n = Number(env);
  if (!Number.isInteger(n)) throw new Error(`FUZZ_SEED must be an integer, got ${JSON.stringify(env)}`);
  return n;
}

export const openFds = (): number => fdsOf('self');

/** Heap in use after a full collection (gc exposed at run time, no node flag needed). */
export function heapAfterGc(): number {
  collectGarbage();
  collectGarbage();
  return process.memoryUsage().heapUsed;
}

/** Counts uncaught exceptions and unhandled rejections until stop() is called. */
export function countUncaught(): { readonly errors: unknown[]; stop(): void } {
  const errors: unknown[] = [];
  const onError = (e: unknown) => errors.push(e);
  process.on('uncaughtException', onError);
  process.on('unhandledRejection', onError);
  return {
    errors,
    stop: () => {
      process.off('uncaughtException', onError);
      process.off('unhandledRejection', onError);
    },
  };
}

/**
 * Settles `p` into a record, or into 'hung' when it has not settled by the
 * watchdog (a promise nobody will ever settle is the bug this catches).
 */
export async function settleWithin<T>(p: Promise<T>, ms: number): Promise<{ state: 'fulfilled'; value: T } | { state: 'rejected'; error: unknown } | { state: 'hung' }> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<{ state: 'hung' }>((r) => (timer = setTimeout(() => r({ state: 'hung' }), ms)));
  try {
    return await Promise.race([
      p.then(
        (value) => ({ state: 'fulfilled' as const, value }),
        (error: unknown) => ({ state: 'rejected' as const, error }),
      ),
      hung,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `n` tasks, at most `width` at a time. */
export async function pool(n: number, width: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, n) }, async () => {
      while (next < n) await task(next++);
    }),
  );
}
