/**
 * What a leak grows, read from /proc: a process's RSS and open fds, and a full
 * garbage collection first, so what is measured is what the process keeps.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** VmRSS of a process, in KiB. */
export function rssKiB(pid: number | 'self'): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`/proc/${pid}/status has no VmRSS line`);
  return Number(m[1]);
}

/** Anonymous memory of a process (its malloc arenas, V8's heap, stacks), in KiB, from smaps_rollup. */
export function anonKiB(pid: number | 'self'): number {
  const m = /^Anonymous:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  if (!m) throw new Error(`/proc/${pid}/smaps_rollup has no Anonymous line`);
  return Number(m[1]);
}

export function fdsOf(pid: number | 'self'): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

let gc: (() => void) | undefined;

/** A full collection, so the RSS sampled is what the harness keeps, not garbage awaiting a GC. */
export function collectGarbage(): void {
  if (!gc) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as () => void;
  }
  gc();
}
