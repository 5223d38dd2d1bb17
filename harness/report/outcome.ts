/**
 * A run's exit status from what its tests did, for `git bisect run`: the one
 * rule `harness run` applies, and that L0 checks L1's exit status against.
 */
import type { TestResult } from './junit.js';

export const RUN_STATUS = { passed: 0, failed: 1, untestable: 125 } as const;

/** How requireQemu words a skip for want of a QEMU (harness/testing/prereqs.ts). */
export const NO_QEMU_SKIP = /^no usable QEMU\b/;

export interface RunCounts {
  passed: number;
  failed: number;
  skipped: number;
  /** Skips for want of a usable QEMU. */
  noQemuSkips: number;
}

export function countsOf(results: readonly TestResult[]): RunCounts {
  const n = (s: TestResult['state']) => results.filter((r) => r.state === s).length;
  return { passed: n('passed'), failed: n('failed'), skipped: n('skipped'), noQemuSkips: results.filter((r) => r.state === 'skipped' && NO_QEMU_SKIP.test(r.skipReason ?? '')).length };
}

/**
 * 1 when a test failed; 125 when nothing passed, or when QEMU-needing tests
 * skipped for want of a QEMU and no arch has a usable one (a run that tested
 * nothing must not call a commit good); else 0.
 */
export function runExitStatus(c: RunCounts, someQemuUsable: boolean): number {
  if (c.failed > 0) return RUN_STATUS.failed;
  if (c.passed === 0) return RUN_STATUS.untestable;
  if (c.noQemuSkips > 0 && !someQemuUsable) return RUN_STATUS.untestable;
  return RUN_STATUS.passed;
}
