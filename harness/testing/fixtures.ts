import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { MachineDescription } from '../qemu/argv.js';
import { Machine, type LaunchOptions } from '../qemu/machine.js';
import type { WithArtifacts } from '../report/mocha-reporter.js';
import { runArtifactsDir } from '../util/paths.js';

/** A folder name for a title; long titles keep a hash of the whole so two never share a folder. */
const slug = (s: string): string => {
  const base = s.toLowerCase().replace(/[^a-z0-9.+-]+/g, '-').replace(/^-+|-+$/g, '') || 'test';
  return base.length <= 80 ? base : `${base.slice(0, 71)}-${createHash('sha1').update(s).digest('hex').slice(0, 8)}`;
};

/** artifacts/tests/<suite>/<test>: one folder per test, named after it. */
export function testArtifactsDir(test: Mocha.Runnable): string {
  const parts: string[] = [];
  for (let s = test.parent; s && !s.root; s = s.parent) parts.unshift(slug(s.title));
  return join(runArtifactsDir(), 'tests', ...parts, slug(test.title));
}

/** The test's own function under the fixture's wrapper (a retry's clone carries the wrapper already). */
const ORIGINAL = Symbol('machine-fixture-original');
type TestFn = ((this: Mocha.Context) => unknown) & { [ORIGINAL]?: TestFn };

/**
 * Machines owned by the current test, after Playwright's fixtures: the test
 * body only launches and asserts; the fixture gives each test its artifact
 * folder (shown by the reporter when the test fails) and shuts down every
 * machine the test launched, pass or fail.
 *
 * How each QEMU ended is part of the verdict: one that aborts at quit or
 * during its final frees, is killed, or exits non-zero fails the test with
 * its exit status and stderr tail. A test that ends a QEMU abnormally on
 * purpose says so with expectExit(); one that signals its QEMU itself
 * (machine.kill) judges that exit on its own.
 *
 *   describe('x', () => {
 *     const machines = useMachines();
 *     it('y', async () => { const m = await machines.launch(desc); ... });
 *   });
 */
export class MachineFixture {
  private current: Machine[] = [];
  /** Machines whose exit the test judges itself, and why. */
  private readonly ownExit = new Map<Machine, string>();
  private test: (Mocha.Runnable & WithArtifacts) | undefined;
  private count = 0;
  /** Which test's turn it is: a timed-out test's function that finishes late must not end the next test's machines. */
  private turn = 0;

  begin(test: Mocha.Runnable & WithArtifacts): number {
    this.test = test;
    this.count = 0;
    return ++this.turn;
  }

  /** The current test's artifact folder (created on first use). */
  get artifactsDir(): string {
    if (!this.test) throw new Error('useMachines(): no test is running');
    const dir = testArtifactsDir(this.test);
    mkdirSync(dir, { recursive: true });
    this.test.artifactsDir = dir;
    return dir;
  }

  async launch(desc: MachineDescription, opts: LaunchOptions = {}): Promise<Machine> {
    const name = opts.name ?? `${desc.machine.type}${++this.count > 1 ? `-${this.count}` : ''}`;
    const m = await Machine.launch(desc, { ...opts, name, artifactsDir: opts.artifactsDir ?? join(this.artifactsDir, name) });
    this.current.push(m);
    // A test that signals its QEMU (a crash, a hang) owns how it ends; SIGCONT only undoes a SIGSTOP.
    const kill = m.kill.bind(m);
    m.kill = (signal) => {
      if (signal !== 'SIGCONT') this.ownExit.set(m, `the test sent it ${signal}`);
      kill(signal);
    };
    return m;
  }

  /** This QEMU ends abnormally on purpose (the test checks how): teardown does not judge its exit. */
  expectExit(m: Machine, why: string): void {
    this.ownExit.set(m, why);
  }

  /**
   * Shuts down every machine of the test (quit, then TERM, then KILL) and
   * returns what was wrong with how they ended, or undefined when each exited
   * with status 0.
   */
  async end(turn = this.turn): Promise<Error | undefined> {
    if (turn !== this.turn) return undefined;
    const ms = this.current.splice(0);
    const before = new Map(ms.map((m) => [m, m.exit]));
    const exits = await Promise.all(ms.map((m) => m.shutdown().then((e) => e, (e: Error) => ({ code: null, signal: null, text: `could not be shut down: ${e.message}` }))));
    this.test = undefined;
    const problems: string[] = [];
    for (const [i, m] of ms.entries()) {
      const e = exits[i]!;
      const own = this.ownExit.get(m);
      this.ownExit.delete(m);
      if (own || (e.code === 0 && e.signal === null)) continue;
      const when = before.get(m) ? 'during the test' : 'at shutdown (quit, then SIGTERM, then SIGKILL)';
      problems.push(`QEMU ${m.name} (pid ${m.pid}) ended ${when} with ${e.text}\n  stderr tail:\n${indent(m.stderrTail() || '(empty)')}\n  artifacts: ${m.artifactsDir}`);
    }
    return problems.length ? new Error(`how QEMU ended fails the test:\n${problems.join('\n')}`) : undefined;
  }
}

const indent = (s: string): string =>
  s
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');

/**
 * One set of machines for a whole describe block (e.g. the virtual lab's L1,
 * which takes seconds to boot): launched in before(), shut down in after(),
 * artifacts in the suite's own folder; how they ended fails the after() hook.
 */
export function useSuiteMachines(): MachineFixture {
  const f = new MachineFixture();
  before(function () {
    f.begin(this.test!.parent! as unknown as Mocha.Runnable);
  });
  after(async function () {
    this.timeout(60_000);
    const problem = await f.end();
    if (problem) throw problem;
  });
  return f;
}

/**
 * Machines per test. The shutdown runs at the end of the test itself (its
 * function is wrapped in beforeEach), so that how QEMU ended fails that
 * test: a failing afterEach hook would instead abort the rest of the suite
 * and its tests would go unreported. afterEach still cleans up after a
 * test whose function takes a done callback, and after a timeout.
 */
export function useMachines(): MachineFixture {
  const f = new MachineFixture();
  beforeEach(function () {
    const test = this.currentTest!;
    const turn = f.begin(test);
    const fn = ((test.fn as TestFn | undefined)?.[ORIGINAL] ?? test.fn) as TestFn | undefined;
    if (!fn || fn.length > 0) return;
    const wrapped = async function (this: Mocha.Context): Promise<void> {
      const started = Date.now();
      let failure: unknown;
      try {
        await fn.call(this);
      } catch (e) {
        failure = e;
      }
      // The teardown gets its own 30 s on top of the time used so far (quit,
      // TERM and KILL take up to ~20 s): mocha also fails a test whose whole
      // duration exceeds its timeout at the end, so never set less than that.
      this.timeout(Date.now() - started + 30_000);
      const problem = await f.end(turn);
      if (failure === undefined && problem) throw problem;
      if (problem && failure instanceof Error) failure.message += `\n${problem.message}`;
      if (failure !== undefined) throw failure;
    };
    (wrapped as TestFn)[ORIGINAL] = fn;
    test.fn = wrapped;
  });
  afterEach(async function () {
    this.timeout(30_000);
    const problem = await f.end();
    // Only reached with machines left when the wrapped function did not run to its end (a timeout, a done callback).
    if (problem && this.currentTest?.state === 'passed') throw problem;
  });
  return f;
}
