import { expect } from 'chai';
import Mocha from 'mocha';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireGuestImage } from '../../harness/guest/image.js';
import { VirtualLab, type SuiteRun } from '../../harness/lab/virtual-lab.js';
import type { TestResult } from '../../harness/report/junit.js';
import type { WithArtifacts } from '../../harness/report/mocha-reporter.js';
import { skipBecause } from '../../harness/report/skip.js';
import { useSuiteMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';

/**
 * The virtual lab: L1 boots under TCG with an emulated VT-d; inside it the
 * harness runs the lab suites exactly as on a lab machine. Each L1 result
 * becomes a test here, so an L1 failure fails this run and an L1 skip is
 * counted with its reason.
 */
describe('virtual lab (L1 under TCG, emulated VT-d)', function () {
  this.timeout(30 * 60_000);
  const machines = useSuiteMachines();
  let lab: VirtualLab | undefined;
  let run: SuiteRun | undefined;

  before(async function () {
    await requireQemu(this, 'x86_64');
    const image = requireGuestImage(this);
    const resultsDir = join(machines.artifactsDir, 'l1');
    const vfioUserLog = join(machines.artifactsDir, 'vfio-user.log');
    lab = await VirtualLab.start((d) => machines.launch(d, { name: 'l1' }), {
      image,
      resultsDir,
      log: (l) => appendFileSync(vfioUserLog, `${l}\n`),
    });
    run = await lab.runSuites(['lab']);
    const suite = this.test!.parent!;
    for (const r of run.results) suite.addTest(l1Test(r));
  });

  // L1 first, then its vfio-user servers (QEMU aborts if a server goes first).
  after(async function () {
    this.timeout(60_000);
    await lab?.stop();
  });

  it('boots L1 and reaches its agent', function () {
    expect(lab, 'L1').to.not.equal(undefined);
    expect(lab!.guest.agentReadyMs).to.be.a('number');
    console.log(`      L1 agent ready after ${lab!.guest.agentReadyMs} ms; L1 suite run ${run!.durationMs} ms`);
  });

  it('serves L1 its synthetic vfio-user endpoints: each handshook with L0 QEMU', function () {
    for (const d of lab!.vfioUser.devices) {
      const s = d.server.stats;
      expect(s.versionHandshakes, `${d.id}: VERSION handshakes`).to.be.greaterThan(0);
      console.log(`      ${d.id}: ${s.requests} requests, ${s.dmaMaps} DMA maps, ${s.errorReplies} error replies`);
    }
    expect(lab!.vfioUser.devices.map((d) => d.id)).to.include('lab-pasid-endpoint');
  });

  it('runs the lab suites inside L1 and brings their results back', function () {
    expect(run!.results.length, `no results from L1; its output:\n${run!.output.slice(-3000)}`).to.be.greaterThan(0);
    expect([0, 1]).to.include(run!.status);
  });
});

/** One L1 result as a test of this run. */
function l1Test(r: TestResult): Mocha.Test {
  const t = new Mocha.Test(`L1 › ${r.suite} › ${r.title}`, function (this: Mocha.Context) {
    if (r.artifactsDir) (this.test as Mocha.Test & WithArtifacts).artifactsDir = r.artifactsDir;
    if (r.state === 'skipped') skipBecause(this, r.skipReason ?? 'skipped in L1');
    if (r.state === 'failed') {
      const e = new Error(`failed in L1: ${r.error ?? '(no message)'}${r.artifactsDir ? `\n  L1 artifacts: ${r.artifactsDir}` : ''}`);
      e.stack = e.message;
      throw e;
    }
  });
  return t;
}
