// The run report from a real run folder (tests/fixtures/report/README.md): what it reads, what it
// writes into the folder, the JUnit extras, and what a person sees in a real headless Chromium.
import { expect } from 'chai';
import { cpSync, existsSync, mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { buildRunReport, type BuildOptions } from '../../harness/report/html/index.js';
import { hostDevices, parseCmdline, shellWords, viommuOf } from '../../harness/report/html/cmdline.js';
import { junitTestcaseExtras, withJunitBase } from '../../harness/report/html/junit-extras.js';
import { allRuns, localArtifactsDir, readRun, type RunView, type TestView } from '../../harness/report/html/run-folder.js';
import { kernelEntries, qmpEntries, traceEntries } from '../../harness/report/html/timeline.js';
import { parseKprobeTrace } from '../../harness/trace/kprobes.js';
import { TraceFormats } from '../../harness/trace/formats.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { REPORT, reportCommand } from '../../harness/cli/report.js';
import { helpText } from '../../harness/cli/options.js';
import { PassThrough } from 'node:stream';
import type { WithArtifacts } from '../../harness/report/mocha-reporter.js';
import { testArtifactsDir } from '../../harness/testing/fixtures.js';
import { repoRoot } from '../../harness/util/paths.js';
import { launchChromium, requireChromium, type Browser } from '../support/chromium.js';

const RUN = '20261202-062227-30695';
const FIXTURE = join(repoRoot, 'tests', 'fixtures', 'report', RUN);
const L1 = join('tests', 'virtual-lab-l1-under-tcg-emulated-vt-d', 'l1');
const L1_TESTS = join(L1, 'artifacts', 'runs', '20261202-062308-91', 'tests');
const REALIZE = join(L1_TESTS, 'realize-errors-triggered-on-a-real-iommu', 'vfio-pci-under-intel-iommu-without-caching-mode-refused-after-the-hwpt--811a89ac');
const NEST_PARENT = join(L1_TESTS, 'pasid-hwpt-flags-for-a-pasid-capable-device', 'intel-iommu-fsts-on-without-pasid-bits-pasid-device-nest-parent-no-pasi-264201d3');
// 11.1.3's own formats, verbatim (tests/fixtures/trace): no reference QEMU needed.
const OPTS: BuildOptions = { traceEvents: () => join(repoRoot, 'tests', 'fixtures', 'trace', 'trace-events-11.1.3-excerpt') };

/** A copy of the fixture run in `dir` (the report writes into the folder it reads). */
function copyRun(dir: string): string {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const run = join(dir, RUN);
  // verbatimSymlinks: L1's artifacts/latest stays the relative link L1 made.
  cpSync(FIXTURE, run, { recursive: true, verbatimSymlinks: true });
  return run;
}

const testAt = (run: RunView, rel: string): TestView => {
  const t = allRuns(run).flatMap((r) => r.tests).find((x) => x.rel === rel && !x.result!.title.startsWith('L1 › '));
  if (!t) throw new Error(`no test with folder ${rel}`);
  return t;
};

describe('HTML run report: reading a real run folder', function () {
  let run: string;
  let built: ReturnType<typeof buildRunReport>;

  before(function () {
    const dir = testArtifactsDir(this.test!.parent! as unknown as Mocha.Runnable);
    run = copyRun(dir);
    built = buildRunReport(run, OPTS);
  });

  it("the cmdline of L1's L2: the binary behind the loader, tcg, intel-iommu without caching-mode, the device", function () {
    const c = parseCmdline(readFileSync(join(run, REALIZE, 'l2', 'cmdline.txt'), 'utf8'));
    expect(c.binary).to.equal('/root/.cache/viommu-harness/qemu/usr/bin/qemu-system-x86_64');
    expect(c.accel).to.deep.equal(['tcg']);
    expect(c.timestamps).to.equal(true);
    expect(viommuOf(c.devices).config).to.deep.equal({ kind: 'intel-iommu', fsts: false, pasidBits: 0 });
    expect(c.devices.find((d) => d.driver === 'intel-iommu')).to.not.have.property('caching-mode');
    expect(hostDevices(c.devices)).to.deep.equal(['0000:01:00.0']);
    expect(shellWords(`a 'b c' "d\\"e" f\\ g`)).to.deep.equal(['a', 'b c', 'd"e', 'f g']);
    expect(() => shellWords("a 'b")).to.throw(/unterminated single quote/);
  });

  it("QMP lines sit at their wall time t: the greeting gives QEMU's version", function () {
    const text = readFileSync(join(run, REALIZE, 'l2', 'qmp.jsonl'), 'utf8');
    const { entries, greeting } = qmpEntries(text, 'qmp.jsonl', 'l2');
    expect(greeting).to.deep.equal({ version: '11.1.3', package: 'Debian 1:11.1.3+ds-1' });
    expect(entries.map((e) => e.t)).to.deep.equal(text.trim().split('\n').map((l) => Date.parse((JSON.parse(l) as { t: string }).t)));
    expect(entries.map((e) => e.text)).to.include('→ qmp_capabilities {"enable":["oob"]}');
  });

  it("10.0's pid@epoch.usec trace prefix is wall time too (lines of trixie's 10.0.13 as L2 in the virtual lab)", function () {
    const formats = TraceFormats.fromText(
      ['trace-events-11.1.3-excerpt', 'trace-events-old-attach'].map((f) => readFileSync(join(repoRoot, 'tests', 'fixtures', 'trace', f), 'utf8')).join('\n'),
    );
    const text = [
      '245@1796192480.558391:iommufd_cdev_connect_and_bind  [iommufd=10] Successfully bound device 0000:05:00.0 (fd=13): output devid=1',
      '245@1796192480.565270:iommufd_backend_alloc_ioas  iommufd=10 ioas=2',
      '245@1796192480.566936:iommufd_backend_alloc_hwpt  iommufd=10 dev_id=1 pt_id=2 flags=0x0 hwpt_type=0 len=0 data_ptr=0x0 out_hwpt=3 (0)',
      '245@1796192480.567781:iommufd_cdev_attach_ioas_hwpt  [iommufd=10] Successfully attached device 0000:05:00.0 (13) to id=3',
    ].join('\n');
    const p = parseTrace(text, formats);
    expect(p.diagnostics).to.deep.equal([]);
    const { entries, placement } = traceEntries(p, IommufdModel.fromParse(p), 'trace.log', 'l2');
    // Microseconds survive (Date alone keeps milliseconds).
    [558.391, 565.27, 566.936, 567.781].forEach((ms, i) => expect(entries[i]!.t! - 1796192480000, `line ${i + 1}`).to.be.closeTo(ms, 0.001));
    expect(entries[2]!.text).to.equal('QEMU asked HWPT_ALLOC flags=0x0 (none) dev_id=1 pt_id=ioas 2 (parent) type=NONE → granted → hwpt 3');
    expect(entries[3]!.text).to.equal('QEMU attached 0000:05:00.0 pasid (none) → hwpt 3 (parent)');
    expect(placement.placed).to.equal(true);
  });

  it('kernel records without a QEMU request to anchor them stay on their uptime clock, and the page says so', function () {
    const records = parseKprobeTrace(readFileSync(join(run, NEST_PARENT, 'kprobes.trace'), 'utf8')).filter((k) => k.event !== 'unparsed');
    const { entries, placement } = kernelEntries(records, undefined, 'kprobes.trace', 'host kernel');
    expect(placement.placed).to.equal(false);
    expect(placement.how).to.match(/^not placed: the kernel's uptime clock has no anchor here .*; no QEMU trace in this test$/);
    expect(entries.map((e) => [e.t, e.ownClock])).to.deep.equal(records.map((k) => [undefined, `${k.time} s kernel uptime`]));
  });

  it("maps recorded artifact paths into the folder read: L1's /mnt share, and L0's paths of another checkout", function () {
    const l1run = join(run, L1, 'artifacts', 'runs', '20261202-062308-91');
    const rec = '/mnt/artifacts/runs/20261202-062308-91/tests/realize-errors-triggered-on-a-real-iommu/vfio-pci-under-intel-iommu-without-caching-mode-refused-after-the-hwpt--811a89ac';
    expect(localArtifactsDir(rec, l1run)).to.equal(join(run, REALIZE));
    expect(localArtifactsDir(`/elsewhere/artifacts/runs/${RUN}/${REALIZE}`, run)).to.equal(join(run, REALIZE));
    expect(localArtifactsDir(`/elsewhere/artifacts/runs/other-name/${REALIZE}`, run), 'a renamed copy').to.equal(join(run, REALIZE));
    expect(localArtifactsDir('/mnt/artifacts/runs/20261202-062308-91/tests/gone', l1run)).to.equal(undefined);
  });

  it("finds L1's run inside the virtual lab's machine folder, with its own results", function () {
    const runs = allRuns(built.run);
    expect(runs.map((r) => r.rel)).to.deep.equal(['', join(L1, 'artifacts', 'runs', '20261202-062308-91')]);
    expect(runs[1]!.results.filter((r) => r.state === 'failed').map((r) => r.title)).to.have.length(2);
    expect(built.run.others.map((t) => t.rel)).to.deep.equal([join('tests', 'virtual-lab-l1-under-tcg-emulated-vt-d')]);
  });

  it('joins the oracle (hw info from the run\'s doctor.json) and the kernel\'s answers (kprobes) to the request', function () {
    const t = testAt(built.run, NEST_PARENT);
    expect(t.oracle.map((o) => [o.bdf, o.expectation?.parent?.flags])).to.deep.equal([['0000:05:00.0', 0x1]]);
    const req = t.placed.find((e) => e.source === 'trace' && e.text.startsWith('QEMU asked HWPT_ALLOC'))!;
    expect(req.text).to.match(/flags=0x1 \(NEST_PARENT\) .* refused EOPNOTSUPP \(kernel\)$/);
    expect(req.oracle).to.deep.include({ match: true });
    const kernel = t.placed.filter((e) => e.source === 'kernel');
    expect(kernel.map((e) => e.text)).to.have.length(2);
    expect(kernel[0]!.text, "the harness's own request first, never joined to QEMU's").to.match(/from the harness's direct request: refused EOPNOTSUPP \(ret=-95\)/);
    expect(kernel[1]!.text).to.match(/from ld-linux-x86-64-\d+: refused EOPNOTSUPP \(ret=-95\)/);
    expect(kernel[1]!.t).to.equal(req.t);
    expect(t.placements.find((p) => p.source === 'kernel')!.how).to.match(/^kernel uptime \+ \d+\.\d{6} s: anchored on its answer \(line \d+\) to QEMU's request \(trace line 6\)/);
  });

  it("writes model.json (the joined model) and failure.txt (message and artifact list) into the test's folder", function () {
    const model = JSON.parse(readFileSync(join(run, REALIZE, 'model.json'), 'utf8')) as { machines: { l2: { model: { hwptAllocs: Array<{ flags: number; ok: boolean }>; liveObjects: unknown[]; qemuMessages: Array<{ realizeCheck?: string }> } } } };
    const m = model.machines.l2.model;
    expect(m.hwptAllocs.map((h) => [h.flags, h.ok])).to.deep.equal([[0, true]]);
    expect(m.liveObjects, 'what the failure names: IOAS and HWPT left allocated').to.have.length(2);
    expect(m.qemuMessages.map((q) => q.realizeCheck).filter(Boolean)).to.deep.equal(['caching-mode']);
    const failure = readFileSync(join(run, REALIZE, 'failure.txt'), 'utf8');
    expect(failure).to.include('AssertionError: expected every allocated iommufd object to be freed, but 2 still live');
    expect(failure).to.match(/^ {2}l2\/trace\.log$/m);
    expect(existsSync(join(run, NEST_PARENT, 'failure.txt')), 'only failures get one').to.equal(false);
    expect(existsSync(join(run, NEST_PARENT, 'model.json'))).to.equal(true);
  });

  it("another run's folder kept as a test's artifact is not read as this run's (the report's own tests keep copies)", function () {
    const outer = join(testArtifactsDir(this.test!), 'outer');
    copyRun(join(outer, 'tests', 'a-suite', 'a-test'));
    writeFileSync(join(outer, 'results.json'), '[]');
    const r = readRun(outer, outer, OPTS);
    expect(r.others).to.deep.equal([]);
    expect(allRuns(r)).to.have.length(1);
  });

  it('JUnit: properties of the QEMU that ran, and ATTACHMENT lines relative to the JUnit file', function () {
    const r = { suite: 's', title: 't', state: 'failed' as const, durationMs: 1, artifactsDir: join(run, REALIZE) };
    const x = withJunitBase(run, () => junitTestcaseExtras(r));
    expect(x).to.include('<property name="l2.qemu.version" value="11.1.3 (Debian 1:11.1.3+ds-1)"/>');
    expect(x).to.include('<property name="l2.accelerator" value="tcg"/>');
    expect(x).to.include('<property name="l2.viommu" value="intel-iommu fsts=off pasid-bits=0"/>');
    expect(x).to.match(/<property name="kernel" value="[^"]+"\/>/);
    expect(x).to.include(`[[ATTACHMENT|${REALIZE.split('\\').join('/')}/l2/trace.log]]`);
  });
});

describe('harness report', function () {
  const io = () => {
    const out = { stdout: new PassThrough(), stderr: new PassThrough() };
    const text = { stdout: '', stderr: '' };
    out.stdout.on('data', (d: Buffer) => (text.stdout += d.toString()));
    out.stderr.on('data', (d: Buffer) => (text.stderr += d.toString()));
    return { io: out, text };
  };

  it('builds the page of a run folder and prints its path; its --help is the README\'s', async function () {
    const run = copyRun(join(testArtifactsDir(this.test!), 'copy'));
    const { io: streams, text } = io();
    expect(await reportCommand([run, '--trace-events', join(repoRoot, 'tests', 'fixtures', 'trace', 'trace-events-11.1.3-excerpt')], streams)).to.equal(0);
    expect(text.stdout).to.equal(`${join(realpathSync(run), 'report.html')}\n`);
    expect(text.stderr).to.equal(`harness report: 9 passed, 2 failed, 6 skipped in ${realpathSync(run)}\n`);
    expect(readFileSync(join(repoRoot, 'README.md'), 'utf8')).to.include(`\`\`\`text\n${helpText(REPORT)}\`\`\``);
  });

  it('a folder that is not there, a stray argument, an unknown option: 128 naming it', async function () {
    for (const [args, msg] of [
      [['/nonexistent/run'], 'run folder /nonexistent/run does not exist'],
      [['a', 'b'], 'unexpected argument "b"'],
      [['--bogus'], 'unknown option --bogus'],
    ] as const) {
      const { io: streams, text } = io();
      expect(await reportCommand([...args], streams), args.join(' ')).to.equal(128);
      expect(text.stderr).to.include(msg);
    }
  });
});

describe('HTML run report: what a person sees (headless Chromium)', function () {
  let browser: Browser | undefined;
  let page: Page;
  let dir: string;
  let shots: string;
  let requests: string[] = [];
  let errors: string[] = [];

  before(async function () {
    requireChromium(this);
    dir = testArtifactsDir(this.test!.parent! as unknown as Mocha.Runnable);
    const run = copyRun(dir);
    shots = join(dir, 'screenshots');
    mkdirSync(shots, { recursive: true });
    const { path } = buildRunReport(run, OPTS);
    browser = await launchChromium();
    ({ page, requests, errors } = browser);
    await page.goto(`file://${path}`, { timeout: 20_000 });
  });

  after(async function () {
    await browser?.close();
  });

  it('opens from disk: nothing fetched but the page itself, no script error', function () {
    expect(requests.filter((u) => !u.startsWith('file://')), 'requests beyond the file').to.deep.equal([]);
    expect(errors).to.deep.equal([]);
  });

  it('lists failures first: the index, then the first test block, are failures', async function () {
    const index = await page.locator('h2', { hasText: 'Failures first' }).textContent();
    expect(index).to.match(/^Failures first \(2, every run\)$/);
    const first = page.locator('details.test').first();
    expect(await first.getAttribute('class')).to.include('s-failed');
    expect(await page.locator('p.counts').first().innerText()).to.match(/^9 passed\s*2 failed\s*6 skipped$/);
  });

  it("the failed test's timeline shows QEMU's request, the oracle's flags beside it, and the refusal", async function (this: Mocha.Context) {
    // The index's last entry: L1's realize error (the page's order: L1's results as L1 reported them).
    await page.locator('ol a', { hasText: 'without caching-mode' }).click();
    const block = page.locator('section.run.nested details.test.s-failed', { hasText: 'without caching-mode' });
    expect(await block.evaluate((d) => (d as HTMLDetailsElement).open)).to.equal(true);
    const rows = block.locator('table.timeline tr');
    const texts = await rows.allInnerTexts();
    const ask = texts.findIndex((t) => /QEMU asked HWPT_ALLOC flags=0x0 \(none\) dev_id=1 pt_id=ioas 2 \(parent\) type=NONE → granted → hwpt 3/.test(t));
    const refused = texts.findIndex((t) => /Failed to set vIOMMU: Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU/.test(t));
    expect(ask, texts.join('\n')).to.be.greaterThan(-1);
    expect(texts[ask]).to.include('✓ as the oracle expects — oracle: flags=0x0 (none)');
    expect(refused, 'the refusal after the request, on the same axis').to.be.greaterThan(ask);
    expect(await rows.nth(refused).getAttribute('class')).to.include('fail');
    expect(await block.locator('a', { hasText: 'failure.txt' }).first().getAttribute('href')).to.match(/failure\.txt$/);
    // The screenshot is this test's artifact (the reporter links it; the page built is beside it, in ../).
    const shot = join(shots, 'failed-test-timeline.png');
    (this.test as Mocha.Test & WithArtifacts).artifactsDir = shots;
    await block.screenshot({ path: shot });
    expect(readFileSync(shot).subarray(1, 4).toString()).to.equal('PNG');
  });

  it("a kernel refusal: 0x1 (NEST_PARENT) refused EOPNOTSUPP by QEMU's request and the kernel's answer, with the axis each source is on", async function () {
    const block = page.locator('section.run.nested details.test', { hasText: 'fsts=on without pasid-bits' });
    await block.evaluate((d) => ((d as HTMLDetailsElement).open = true));
    const texts = await block.locator('table.timeline tr').allInnerTexts();
    expect(texts.some((t) => /QEMU asked HWPT_ALLOC flags=0x1 \(NEST_PARENT\).*refused EOPNOTSUPP \(kernel\)/.test(t) && t.includes('✓ as the oracle expects'))).to.equal(true);
    expect(texts.some((t) => /kernel answered HWPT_ALLOC flags=0x1 \(NEST_PARENT\).*from ld-linux.*refused EOPNOTSUPP \(ret=-95\)/.test(t))).to.equal(true);
    const placed = await block.locator('h3:has-text("How each source was placed") + ul li').allInnerTexts();
    expect(placed.find((l) => l.startsWith('kernel'))).to.match(/anchored on its answer/);
    await block.screenshot({ path: join(shots, 'kernel-refusal-timeline.png') });
  });

  it("names the axis a source could not be placed on: L1's console has no wall-clock time", async function () {
    const block = page.locator('h2:has-text("Machines of a whole suite") ~ details.test').first();
    await block.evaluate((d) => ((d as HTMLDetailsElement).open = true));
    const placed = await block.locator('h3:has-text("How each source was placed") + ul li').allInnerTexts();
    expect(placed.find((l) => l.startsWith('console'))).to.match(/not placed: the console carries no wall-clock time/);
    expect(await block.locator('h3', { hasText: 'Not on the time axis' }).count()).to.equal(1);
  });
});
