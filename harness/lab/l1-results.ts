/**
 * L1's results checked against what L1 was expected to run: the static list
 * of the lab suites (harness/testing/test-list.ts) and the exit status of
 * L1's `harness run`. Results arrive one by one as L1 writes them (JSON lines
 * on the results share), so each L0 test waits for its own and shows it as
 * soon as L1 has it. A test L1 was expected to run and did not report fails
 * with the reason (L1 stopped after N results, or its suite file gave none);
 * an exit status the results do not explain fails the run.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import type { TestResult } from '../report/junit.js';
import { countsOf, RUN_STATUS, runExitStatus } from '../report/outcome.js';
import { resultKey, testKey, type ListedTest } from '../testing/test-list.js';

/** How L0 titles an L1 test: "L1 › suite › ... › title". */
export const L1_PREFIX = 'L1 › ';
const REPEAT = / \(repeat \d+\/\d+\)$/;

export interface L1Run {
  status: number;
  results: TestResult[];
}

export class L1Results {
  private readonly byKey = new Map<string, TestResult>();
  private readonly expectedKeys: Map<string, ListedTest>;
  private readonly waiters = new Map<string, Array<(r: TestResult | undefined) => void>>();
  private done: (L1Run & { error?: string }) | undefined;

  constructor(readonly expected: readonly ListedTest[]) {
    this.expectedKeys = new Map(expected.map((l) => [testKey(l), l]));
  }

  /** One result as L1 reported it. */
  add(r: TestResult): void {
    const key = resultKey(r);
    this.byKey.set(key, r);
    for (const w of this.waiters.get(key) ?? []) w(r);
    this.waiters.delete(key);
  }

  /** L1's run is over: its final results (authoritative) and exit status, or why it did not finish. */
  finish(run: L1Run & { error?: string }): this {
    for (const r of run.results) this.add(r);
    this.done = { ...run, results: run.results.length ? run.results : [...this.byKey.values()] };
    for (const ws of this.waiters.values()) for (const w of ws) w(undefined);
    this.waiters.clear();
    return this;
  }

  get finished(): boolean {
    return this.done !== undefined;
  }

  /** The L1 result for an L0 test title (L1_PREFIX + key, perhaps a --repeat copy), or undefined once L1 ended without it. */
  result(l0Title: string): Promise<TestResult | undefined> {
    const key = l0Title.slice(L1_PREFIX.length);
    const r = this.byKey.get(key);
    if (r || this.done) return Promise.resolve(r);
    return new Promise((resolve) => this.waiters.set(key, [...(this.waiters.get(key) ?? []), resolve]));
  }

  private get run(): L1Run & { error?: string } {
    if (!this.done) throw new Error("L1's run has not ended");
    return this.done;
  }

  /** Why L1 has no result for `l0Title` (once it has ended). */
  missingReason(l0Title: string): string {
    const key = l0Title.slice(L1_PREFIX.length);
    const listed = this.expectedKeys.get(key.replace(REPEAT, ''));
    const { results, status, error } = this.run;
    const n = results.length;
    const ended = error ? `L1's harness run did not finish (${error})` : `L1's harness run exited ${status}`;
    if (listed?.file && !results.some((r) => r.file === listed.file))
      return `L1 did not report it: no result at all from its suite file ${listed.file} (missing in L1, or it failed to load); ${ended} after ${n} results`;
    const last = results.at(-1);
    return `L1 did not report it: ${ended} after ${n} results${last ? ` (the last was "${resultKey(last)}")` : ''}: crashed or killed?`;
  }

  /** Results L1 reported that L0's list did not expect (L0 and L1 saw different suites). */
  unexpected(): TestResult[] {
    return this.run.results.filter((r) => !this.expectedKeys.has(resultKey(r).replace(REPEAT, '')));
  }

  /** What is wrong with L1's exit status given its results, or undefined. */
  statusProblem(): string | undefined {
    const { results, status, error } = this.run;
    if (error) return `L1's harness run did not finish: ${error}`;
    const c = countsOf(results);
    // L1 cannot tell us whether it had a QEMU at all; a skip for want of one allows 125.
    const allowed = new Set([runExitStatus(c, true), ...(c.noQemuSkips ? [RUN_STATUS.untestable] : [])]);
    if (allowed.has(status)) return undefined;
    return `L1's harness run exited ${status}, but its ${results.length} results (${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped) call for ${[...allowed].join(' or ')}`;
  }
}

/**
 * Follows a file of JSON lines another machine appends to (L1 over the 9p
 * results share): every complete line goes to `onLine` as it appears, polled
 * every `intervalMs`. stop() reads what is left and ends the polling.
 */
export function followJsonLines(path: string, onLine: (value: unknown) => void, intervalMs = 500): { stop: () => void; bad: string[] } {
  const bad: string[] = [];
  let offset = 0;
  let partial = '';
  const read = (): void => {
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      return; // not written yet
    }
    if (size <= offset) return;
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(size - offset);
      const n = readSync(fd, buf, 0, buf.length, offset);
      offset += n;
      const lines = (partial + buf.subarray(0, n).toString('utf8')).split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        if (!l.trim()) continue;
        let v: unknown;
        try {
          v = JSON.parse(l);
        } catch {
          bad.push(l);
          continue;
        }
        onLine(v);
      }
    } finally {
      closeSync(fd);
    }
  };
  const timer = setInterval(read, intervalMs);
  return {
    bad,
    stop: () => {
      clearInterval(timer);
      read();
    },
  };
}
