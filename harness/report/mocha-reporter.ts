import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Mocha from 'mocha';
import { interruption, type Interrupt } from '../util/interrupt.js';
import { runArtifactsDir } from '../util/paths.js';
import { junitXml, summaryText, type TestResult } from './junit.js';
import { reportAtRunEnd } from './html/index.js';
import { junitPath, writeFileAtomic } from './run-files.js';
import { createOutput, reporterFromEnv } from './output.js';
import type { SkippableTest } from './skip.js';

/** Where a fixture put the test's artifacts (set by tests/support/fixtures). */
export interface WithArtifacts {
  artifactsDir?: string;
}

type T = Mocha.Test & SkippableTest & WithArtifacts;

function suitePath(t: Mocha.Runnable): string {
  const parts: string[] = [];
  for (let s = t.parent; s && !s.root; s = s.parent) parts.unshift(s.title);
  return parts.join(' › ') || '(root)';
}

/**
 * Mocha's spec output (or dot, or spec with GitHub Actions annotations:
 * $HARNESS_REPORTER, which `harness run --reporter` sets; harness/report/output.ts), plus: skips counted apart and grouped by reason, the
 * artifacts folder of every failed test, JUnit XML (HARNESS_JUNIT, or
 * artifacts/junit.xml; results.json in the run's folder and at HARNESS_RESULTS_JSON; one JSON
 * line per result as it finishes at HARNESS_RESULTS_JSONL), and the closing line "N passed, N failed, N skipped".
 */
export default class HarnessReporter extends Mocha.reporters.Base {
  readonly results: TestResult[] = [];

  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    // Plain lines for CI logs and files (issue 11): colours only on a terminal, never with
    // CI or NO_COLOR set; MOCHA_COLORS or FORCE_COLOR ask for them anyway.
    const env = process.env;
    Mocha.reporters.Base.useColors =
      env.MOCHA_COLORS !== undefined ||
      (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '0') ||
      (Boolean(process.stdout.isTTY) && !env.CI && env.NO_COLOR === undefined);
    // mocha's ✔/✖ come pre-coloured from log-symbols whatever useColors says: plain ones then.
    if (!Mocha.reporters.Base.useColors) Object.assign(Mocha.reporters.Base.symbols, { ok: '✔', err: '✖' });
    // First, so its epilogue prints before this run's summary (both on EVENT_RUN_END).
    createOutput(reporterFromEnv(), runner, options);
    const failedHooks = hookFailures.get(runner) ?? new Map<Mocha.Suite, string>();
    hookFailures.set(runner, failedHooks);
    const add = (t: T, state: TestResult['state'], err?: Error) => {
      const r: TestResult = {
        suite: suitePath(t),
        title: t.title,
        state,
        durationMs: t.duration ?? 0,
        startedAt: new Date(Date.now() - (t.duration ?? 0)).toISOString(),
      };
      if (err) r.error = err.stack ?? String(err);
      if (state === 'skipped') r.skipReason = t.skipReason ?? 'skipped without a reason';
      if (t.artifactsDir) r.artifactsDir = t.artifactsDir;
      if (t.file) r.file = t.file;
      this.results.push(r);
      // One JSON line per result as it finishes: L0 follows L1's (the virtual lab) live, and
      // what was written stays readable after a crash that never reaches the end of the run.
      for (const f of new Set([process.env.HARNESS_RESULTS_JSONL, ...extraStreams])) if (f) appendFileSync(f, `${JSON.stringify(r)}\n`);
    };
    runner.on(Mocha.Runner.constants.EVENT_TEST_PASS, (t: T) => add(t, 'passed'));
    runner.on(Mocha.Runner.constants.EVENT_TEST_FAIL, (t: T, err: Error) => {
      // A failing hook is reported as a failure of the hook itself.
      add(t, 'failed', err);
      if ((t as Mocha.Runnable & { type?: string }).type === 'hook' && t.parent) failedHooks.set(t.parent, t.title);
    });
    runner.on(Mocha.Runner.constants.EVENT_TEST_PENDING, (t: T) => add(t, 'skipped'));
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => this.finish(runner));
    active = { reporter: this, runner };
  }

  private finished = false;

  /**
   * Writes the run's JUnit, results and summary, once: at the end of the run,
   * or from harness run when an interrupted run's hooks overran their deadline.
   */
  finish(runner: Mocha.Runner): void {
    if (this.finished) return;
    this.finished = true;
    if (active?.reporter === this) active = undefined;
    this.results.push(...neverRan(runner, this.results));
    const stop = interruption();
    if (stop) this.results.push(interruptedRun(stop, this.results));
    const path = junitPath();
    const xml = junitXml(this.results);
    writeFileAtomic(path, xml);
    // The run's folder keeps its own copy (artifacts/junit.xml is the latest run's).
    if (!process.env.HARNESS_JUNIT) writeFileAtomic(join(runArtifactsDir(), 'junit.xml'), xml);
    // Machine-readable results: in the run's folder for `harness run --failed`,
    // and at HARNESS_RESULTS_JSON for a run inside the virtual lab's L1 whose
    // results the L0 run checks and merges into its own report.
    const json = JSON.stringify(this.results, null, 1);
    writeFileAtomic(join(runArtifactsDir(), 'results.json'), json);
    if (process.env.HARNESS_RESULTS_JSON) writeFileSync(process.env.HARNESS_RESULTS_JSON, json);
    // Mocha's own epilogue was registered first and has printed by now;
    // synchronous, because with --exit mocha ends the process right after.
    console.log(`\n${summaryText(this.results)}${stop ? `\nINTERRUPTED by ${stop.signal}` : ''}\nJUnit: ${path}\nArtifacts: ${runArtifactsDir()}`);
    // The run's HTML report (and each test's model.json, failure.txt): harness/report/html.
    console.log(reportAtRunEnd(runArtifactsDir(), this.results));
  }
}

/** Files this process alone streams its results to (set by code, not the environment, so no child inherits them). */
const extraStreams = new Set<string>();

/** Streams each result, as it finishes, to `path` as one JSON line too (`harness run --watch`); returns the undo. */
export function streamResultsTo(path: string): () => void {
  extraStreams.add(path);
  return () => extraStreams.delete(path);
}

/** The reporter of the run in progress, for an interrupted run that must write its reports without mocha. */
let active: { reporter: HarnessReporter; runner: Mocha.Runner } | undefined;

/** Writes the reports of the run in progress now (a no-op once they are written). */
export function finishActiveReport(): void {
  active?.reporter.finish(active.runner);
}

/** The result that marks an interrupted run as one (a failure, so no CI reads it as a pass). */
function interruptedRun(stop: Interrupt, results: readonly TestResult[]): TestResult {
  const never = results.filter((r) => r.error?.startsWith('never ran: ')).length;
  return {
    suite: '(run)',
    title: 'the run finished',
    state: 'failed',
    durationMs: 0,
    error: `interrupted by ${stop.signal} at ${new Date(stop.atMs).toISOString()}: ${results.length - never} tests gave a result, ${never} never ran`,
  };
}

/** Per runner: the suites whose hook failed, and that hook's title. */
const hookFailures = new WeakMap<Mocha.Runner, Map<Mocha.Suite, string>>();

/**
 * Results cannot vanish: every test of the run's tree that got no result
 * (mocha runs none of a suite's remaining tests after a failed hook, and
 * reports none of them) becomes a failure saying why it never ran.
 */
function neverRan(runner: Mocha.Runner, results: readonly TestResult[]): TestResult[] {
  const seen = new Set(results.map((r) => `${r.suite}\u0000${r.title}`));
  // mocha's own --grep leaves unselected tests in the tree (harness run removes them instead).
  const grep = (runner as Mocha.Runner & { _grep?: RegExp; _invert?: boolean })._grep;
  const invert = (runner as Mocha.Runner & { _invert?: boolean })._invert === true;
  const failed = hookFailures.get(runner) ?? new Map<Mocha.Suite, string>();
  const out: TestResult[] = [];
  const walk = (s: Mocha.Suite): void => {
    for (const t of s.tests) {
      if (grep && grep.test(t.fullTitle()) === invert) continue;
      if (t.isPending() || seen.has(`${suitePath(t)}\u0000${t.title}`)) continue;
      const stop = interruption();
      let why = stop ? `the run was interrupted by ${stop.signal}` : 'mocha gave it no result by the end of the run';
      for (let p: Mocha.Suite | undefined = t.parent; p; p = p.parent) {
        const hook = failed.get(p);
        if (hook) {
          why = `${hook} failed${p.root ? '' : ` in "${p.titlePath().join(' › ')}"`}`;
          break;
        }
      }
      out.push({ suite: suitePath(t), title: t.title, state: 'failed', durationMs: 0, error: `never ran: ${why}`, ...(t.file ? { file: t.file } : {}) });
    }
    for (const c of s.suites) walk(c);
  };
  walk(runner.suite);
  return out;
}
