/**
 * L1's results checked against what L1 was expected to run: the static list
 * of the lab suites (harness/testing/test-list.ts) and the exit status of
 * L1's `harness run`. A test L1 was expected to run and did not report fails
 * with the reason (L1 stopped after N results, or its suite file gave none);
 * an exit status the results do not explain fails the run.
 */
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

  constructor(
    readonly expected: readonly ListedTest[],
    readonly run: L1Run,
  ) {
    for (const r of run.results) this.byKey.set(resultKey(r), r);
    this.expectedKeys = new Map(expected.map((l) => [testKey(l), l]));
  }

  /** The L1 result for an L0 test title (L1_PREFIX + key, perhaps a --repeat copy). */
  resultFor(l0Title: string): TestResult | undefined {
    return this.byKey.get(l0Title.slice(L1_PREFIX.length));
  }

  /** Why L1 has no result for `l0Title`. */
  missingReason(l0Title: string): string {
    const key = l0Title.slice(L1_PREFIX.length);
    const listed = this.expectedKeys.get(key.replace(REPEAT, ''));
    const n = this.run.results.length;
    const last = this.run.results.at(-1);
    const sameFile = listed?.file ? this.run.results.filter((r) => r.file === listed.file).length : 0;
    if (listed?.file && sameFile === 0)
      return `L1 did not report it: no result at all from its suite file ${listed.file} (missing in L1, or it failed to load); L1's harness run exited ${this.run.status} after ${n} results`;
    return `L1 did not report it: L1's harness run stopped after ${n} results (exit status ${this.run.status}${last ? `; the last was "${resultKey(last)}"` : ''}): crashed or killed?`;
  }

  /** Results L1 reported that L0's list did not expect (L0 and L1 saw different suites). */
  unexpected(): TestResult[] {
    return this.run.results.filter((r) => !this.expectedKeys.has(resultKey(r).replace(REPEAT, '')));
  }

  /** What is wrong with L1's exit status given its results, or undefined. */
  statusProblem(): string | undefined {
    const c = countsOf(this.run.results);
    // L1 cannot tell us whether it had a QEMU at all; a skip for want of one allows 125.
    const allowed = new Set([runExitStatus(c, true), ...(c.noQemuSkips ? [RUN_STATUS.untestable] : [])]);
    if (allowed.has(this.run.status)) return undefined;
    return `L1's harness run exited ${this.run.status}, but its ${this.run.results.length} results (${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped) call for ${[...allowed].join(' or ')}`;
  }
}
