import { expect } from 'chai';
import Mocha from 'mocha';
import { join } from 'node:path';
import type { GuestImage } from '../../harness/guest/image.js';
import { L1_PREFIX, L1Results } from '../../harness/lab/l1-results.js';
import { VirtualLab, type LabPlatform, type SuiteRun, type VirtualLabOptions } from '../../harness/lab/virtual-lab.js';
import type { TestResult } from '../../harness/report/junit.js';
import type { WithArtifacts } from '../../harness/report/mocha-reporter.js';
import { skipBecause } from '../../harness/report/skip.js';
import { useSuiteMachines, type MachineFixture } from '../../harness/testing/fixtures.js';
import { exactTitles, fullTitle, listTestsSync, testKey, type ListedTest } from '../../harness/testing/test-list.js';

/** The suites L1 runs. */
export const L1_SUITES = ['lab'];

/**
 * L1's tests, listed from the compiled lab suites before anything runs, so
 * that `harness run --list` shows them, `--grep` reaches them and a test L1
 * should have run but did not report fails instead of vanishing. The same
 * list on both platforms: the lab suites skip, in L1, the rows of another.
 */
let expected: ListedTest[] = [];
let listError: Error | undefined;
try {
  expected = listTestsSync(L1_SUITES);
} catch (e) {
  listError = e as Error;
}

export interface L1LabSpec {
  title: string;
  platform: LabPlatform;
  /** The prerequisites (each a measured skip) and the image L1 boots. */
  image(ctx: Mocha.Context, machines: MachineFixture): Promise<GuestImage>;
  /** Lab options beyond the platform, image and results folder. */
  options?(machines: MachineFixture): Partial<VirtualLabOptions>;
  /** Tests of the booted L1 itself, before L1's own tests. */
  tests?(lab: () => VirtualLab): void;
  /** Tests of L1's finished run (its results, their artifacts on L0), after L1's own tests. */
  testsAfterRun?(lab: () => VirtualLab, run: () => Promise<SuiteRun>): void;
}

/**
 * A virtual lab as a suite: L1 boots; inside it the harness runs the lab
 * suites exactly as on a lab machine. Each test L1 is expected to run is a
 * test here, registered up front; it passes, fails or skips as L1's result
 * says, and fails when L1 did not report it.
 */
export function describeL1Lab(spec: L1LabSpec): void {
  describe(spec.title, function () {
    this.timeout(30 * 60_000);
    const machines = useSuiteMachines();
    let lab: VirtualLab | undefined;
    /** L1's results as they come; each L1 test below waits for its own. */
    const l1 = new L1Results(expected);
    let run: Promise<SuiteRun> | undefined;

    before(async function () {
      const image = await spec.image(this, machines);
      const suite = this.test!.parent!;
      // What this run selected (harness run --grep / --failed remove the rest before the run starts).
      const selectedL1 = new Set(
        suite.tests.filter((t) => t.title.startsWith(L1_PREFIX)).map((t) => t.title.slice(L1_PREFIX.length).replace(/ \(repeat \d+\/\d+\)$/, '')),
      );
      const wantsRun = selectedL1.size > 0 || suite.tests.some((t) => t.title.startsWith('runs the lab suites'));
      lab = await VirtualLab.start((d) => machines.launch(d, { name: 'l1' }), {
        ...spec.options?.(machines),
        platform: spec.platform,
        image,
        resultsDir: join(machines.artifactsDir, 'l1'),
      });
      if (!wantsRun) return;
      const subset = selectedL1.size > 0 && selectedL1.size < expected.length;
      const repeat = Number(process.env.HARNESS_REPEAT ?? 1);
      // Not awaited: L1's suites run while the tests below report each result as it arrives.
      run = lab.runSuites(L1_SUITES, {
        ...(subset ? { grep: exactTitles(expected.filter((l) => selectedL1.has(testKey(l))).map(fullTitle)) } : {}),
        ...(repeat > 1 ? { repeat } : {}),
        onResult: (r) => l1.add(r),
      });
      run.then(
        (x) => l1.finish(x),
        (e: Error) => l1.finish({ status: -1, results: [], error: e.message }),
      );
    });

    // L1's run ends on its own first (its cleanup, results.json, l1-run.log: runSuites bounds it);
    // then L1, then its vfio-user servers (QEMU aborts if a server goes first).
    after(async function () {
      this.timeout(25 * 60_000);
      await run?.catch(() => {});
      await lab?.stop();
    });

    it('boots L1 and reaches its agent', function () {
      expect(lab, 'L1').to.not.equal(undefined);
      expect(lab!.guest.agentReadyMs).to.be.a('number');
      console.log(`      L1 agent ready after ${lab!.guest.agentReadyMs} ms`);
    });

    spec.tests?.(() => lab!);

    for (const l of expected) this.addTest(l1Test(`${L1_PREFIX}${testKey(l)}`));

    /** One test L1 should run, judged by L1's result as soon as L1 has it (looked up by title, so --repeat copies find theirs). */
    function l1Test(title: string): Mocha.Test {
      return new Mocha.Test(title, async function (this: Mocha.Context) {
        if (!run) throw new Error("L1's suites did not run");
        const r: TestResult | undefined = await l1.result(this.test!.title);
        if (!r) throw new Error(l1.missingReason(this.test!.title));
        if (r.artifactsDir) (this.test as Mocha.Test & WithArtifacts).artifactsDir = r.artifactsDir;
        if (r.state === 'skipped') skipBecause(this, r.skipReason ?? 'skipped in L1');
        if (r.state === 'failed') {
          const e = new Error(`failed in L1: ${r.error ?? '(no message)'}${r.artifactsDir ? `\n  L1 artifacts: ${r.artifactsDir}` : ''}`);
          e.stack = e.message;
          throw e;
        }
      });
    }

    it('runs the lab suites inside L1: its exit status agrees with its results, and every result was expected', async function () {
      if (listError) throw new Error(`could not list L1's tests (harness run --list --suite ${L1_SUITES.join(' --suite ')}): ${listError.message}`);
      expect(run, "L1's suites did not run").to.not.equal(undefined);
      const r = await run!.catch((e: Error) => e);
      if (r instanceof Error) throw new Error(`L1's harness run did not finish: ${r.message}`);
      console.log(`      L1 suite run ${r.durationMs} ms, ${r.results.length} results`);
      expect(r.results.length, `no results from L1; its output:\n${r.output.slice(-3000)}`).to.be.greaterThan(0);
      const problem = l1.statusProblem();
      expect(problem, `${problem}; L1's output:\n${r.output.slice(-3000)}`).to.equal(undefined);
      expect(
        l1.unexpected().map((x) => `${x.suite} › ${x.title}: ${x.state}`),
        "results L0's list of L1's tests did not have",
      ).to.deep.equal([]);
    });

    spec.testsAfterRun?.(
      () => lab!,
      () => {
        if (!run) throw new Error("L1's suites did not run");
        return run;
      },
    );
  });
}
