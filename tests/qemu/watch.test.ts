import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { execa } from 'execa';
import type { TestResult } from '../../harness/report/junit.js';
import { startWatch, type RunningMachine, type WatchServer } from '../../harness/report/watch.js';
import type { Machine } from '../../harness/qemu/machine.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';
import type { WsClient } from '../../harness/qmp/ws-client.js';
import { launchChromium, requireChromium, type Browser } from '../support/chromium.js';
import { refusedUpgrade, wsClient } from '../support/ws-client.js';

/** Messages until `done` says enough (events QEMU adds in between are kept, not lost), at most 20. */
async function until(q: WsClient, done: (msgs: Array<Record<string, unknown>>) => boolean): Promise<Array<Record<string, unknown>>> {
  const msgs: Array<Record<string, unknown>> = [];
  while (!done(msgs)) {
    if (msgs.length >= 20) throw new Error(`20 messages without the one awaited: ${JSON.stringify(msgs)}`);
    msgs.push(JSON.parse(await q.next()) as Record<string, unknown>);
  }
  return msgs;
}

const get = (url: string) => withDeadline(fetch(url, { redirect: 'manual' }), 10_000, `GET ${url}`);

describe('harness run --watch: the live report server', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const machines = useMachines();
  let runDir: string;
  let jsonl: string;
  let m: Machine;
  let watch: WatchServer | undefined;
  beforeEach(async () => {
    // A run folder of the test's own, with its machine where a run's test would keep it.
    runDir = join(machines.artifactsDir, 'watched-run');
    jsonl = join(runDir, 'results.jsonl');
    mkdirSync(join(runDir, 'tests'), { recursive: true });
    writeFileSync(jsonl, '');
    m = await machines.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true }, { artifactsDir: join(runDir, 'tests', 'watch', 'a-test', 'none') });
  });
  afterEach(async () => {
    await watch?.close();
    watch = undefined;
  });
  const start = async (write = false) => {
    watch = await startWatch({ runDir, resultsJsonl: jsonl, write, debounceMs: 100, pollMs: 100 });
    return watch;
  };
  const base = (w: WatchServer) => `127.0.0.1:${w.port}/${w.token}`;

  it('serves the page with the token only (403 without), and says "updated" once a result arrives', async function () {
    this.timeout(30_000);
    const w = await start();
    expect(w.url).to.match(/^http:\/\/127\.0\.0\.1:\d+\/[\w-]{32}\/$/);
    const page = await get(w.url);
    expect(page.status).to.equal(200);
    const html = await page.text();
    expect(html).to.include('<h1>').and.include("new URL('live',location.href)");
    expect((await get(`http://127.0.0.1:${w.port}/`)).status).to.equal(403);
    expect((await get(`http://127.0.0.1:${w.port}/not-the-token/`)).status).to.equal(403);
    expect((await get(`http://127.0.0.1:${w.port}/${w.token}`)).headers.get('location')).to.equal(`/${w.token}/`);
    expect(await refusedUpgrade(`ws://127.0.0.1:${w.port}/wrong/live`)).to.equal(403);
    // The run folder's files (the report's links), nothing outside it.
    expect(await (await get(`http://${base(w)}/tests/watch/a-test/none/cmdline.txt`)).text()).to.include('-machine none');
    writeFileSync(join(runDir, '..', 'outside.txt'), 'not the run folder\n');
    expect((await get(`http://${base(w)}/..%2Foutside.txt`)).status).to.equal(403);
    expect((await get(`http://${base(w)}/%E0%A4%A`)).status).to.equal(400);

    const live = await wsClient(`ws://${base(w)}/live`);
    expect(JSON.parse(await live.next())).to.deep.equal({ type: 'hello', summary: '0 passed, 0 failed, 0 skipped' });
    const result: TestResult = { suite: 'watch', title: 'a result that just finished', state: 'passed', durationMs: 3 };
    appendFileSync(jsonl, `${JSON.stringify(result)}\n`);
    expect(JSON.parse(await live.next(5000))).to.deep.equal({ type: 'updated', summary: '1 passed, 0 failed, 0 skipped' });
    expect(await (await get(w.url)).text()).to.include('a result that just finished');

    const ended = live.next(5000);
    await w.close();
    watch = undefined;
    expect(JSON.parse(await ended)).to.deep.equal({ type: 'ended', summary: '1 passed, 0 failed, 0 skipped' });
    // Closed means closed: no server behind the port any more.
    const after = await fetch(w.url).then(
      (r) => `answered ${r.status}`,
      (e: Error) => e.message,
    );
    expect(after).to.not.match(/^answered/);
  });

  it('lists the running machine, and bridges its QMP read-only: query-status answered, stop and quit refused', async function () {
    this.timeout(30_000);
    const w = await start();
    const listed = (await (await get(`http://${base(w)}/machines`)).json()) as RunningMachine[];
    expect(listed).to.deep.equal([{ name: 'none', test: join('watch', 'a-test'), pid: m.pid, qmp: `/${w.token}/qmp/${m.pid}` }]);
    expect(await refusedUpgrade(`ws://127.0.0.1:${w.port}/wrong${listed[0]!.qmp.slice(w.token.length + 1)}`)).to.equal(403);
    expect(await refusedUpgrade(`ws://${base(w)}/qmp/999999999`)).to.equal(404);
    for (const key of [String(m.pid), 'none']) {
      const q = await wsClient(`ws://${base(w)}/qmp/${key}`);
      expect(JSON.parse(await q.next())).to.have.nested.property('QMP.version.qemu.major');
      q.send({ execute: 'query-status', id: 's' });
      expect(JSON.parse(await q.next())).to.deep.equal({ return: { status: 'prelaunch', running: false }, id: 's' });
      for (const command of ['stop', 'quit', 'cont']) {
        q.send({ execute: command, id: command });
        const reply = JSON.parse(await q.next()) as { error?: { desc: string }; id: string };
        expect(reply, command).to.have.property('id', command);
        expect(reply.error?.desc, command).to.equal(`QMP bridge: read-only (query-* commands only): ${command} refused`);
      }
      q.close();
    }
    const status = await m.qmp.execute<{ status: string }>('query-status');
    expect(status.status, 'the refused commands reached QEMU').to.equal('prelaunch');
  });

  it('with write access (--watch-write): stop and quit accepted, and the machine leaves the list', async function () {
    this.timeout(30_000);
    const w = await start(true);
    const q = await wsClient(`ws://${base(w)}/qmp/${m.pid}`);
    expect(await q.next()).to.include('"QMP"');
    q.send({ execute: 'stop', id: 1 });
    expect(await until(q, (ms) => ms.some((x) => x.id === 1))).to.deep.include({ return: {}, id: 1 });
    q.send({ execute: 'quit', id: 2 });
    // quit's answer and SHUTDOWN, in whichever order QEMU sends them.
    const got = await until(q, (ms) => ms.some((x) => x.id === 2) && ms.some((x) => x.event === 'SHUTDOWN'));
    expect(got).to.deep.include({ return: {}, id: 2 });
    expect((await m.waitExit(10_000)).code).to.equal(0);
    expect(await (await get(`http://${base(w)}/machines`)).json()).to.deep.equal([]);
    q.close();
  });
});

describe('harness run --watch (the command)', function () {
  this.timeout(120_000);
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const root = mkdtempSync(join(tmpdir(), 'harness-watch-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  // The child must stream to its own run folder only: none of this run's report variables.
  const { HARNESS_JUNIT: _j, HARNESS_RESULTS_JSONL: _l, HARNESS_RESULTS_JSON: _r, ...baseEnv } = process.env;
  const run = (args: string[]) =>
    execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', ...args], {
      reject: false,
      extendEnv: false,
      env: { ...baseEnv, HARNESS_ARTIFACTS: join(root, 'artifacts') },
    });

  it('--watch-write or --watch-port without --watch, a bad port, --watch with --list or --jobs 2: exit 128 naming the problem', async () => {
    const cases: Array<[string[], string]> = [
      [['--watch-write'], '--watch-write goes with --watch'],
      [['--watch-port', '8080'], '--watch-port goes with --watch'],
      [['--watch', '--watch-port', '70000'], '--watch-port wants a port number from 1 to 65535, not "70000"'],
      [['--watch', '--list'], '--watch goes with a run, not --list'],
      [['--watch', '--jobs', '2'], '--watch serves one process: not with --jobs above 1'],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      expect(r.exitCode, args.join(' ')).to.equal(128);
      expect(String(r.stderr), args.join(' ')).to.include(`harness run: ${message}`);
    }
  });

  it('serves the running run: the URL printed, the finished test on the page, the running test\'s QEMU listed and its QMP answering, "ended" at the end', async () => {
    const held = join(root, 'held');
    const go = join(root, 'go');
    const spec = join(root, 'watched.test.mjs');
    writeFileSync(
      spec,
      `import { existsSync, writeFileSync } from 'node:fs';
import { useMachines } from ${JSON.stringify(join(repoRoot, 'dist', 'harness', 'testing', 'fixtures.js'))};
describe('watched', () => {
  const machines = useMachines();
  it('finishes first', () => {});
  it('holds a QEMU until told', async function () {
    this.timeout(60_000);
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true });
    writeFileSync(${JSON.stringify(held)}, String(m.pid));
    const end = Date.now() + 50_000;
    while (!existsSync(${JSON.stringify(go)})) {
      if (Date.now() > end) throw new Error('never told to go on');
      await new Promise((r) => setTimeout(r, 50));
    }
  });
});
`,
    );
    const p = run(['--watch', '--spec', spec]);
    let stderr = '';
    p.stderr!.on('data', (d) => (stderr += String(d)));
    try {
      const url = await withDeadline(
        (async () => {
          let m: RegExpExecArray | null;
          while (!(m = /watch this run at (http:\/\/127\.0\.0\.1:\d+\/[\w-]+\/) \(QMP read-only/.exec(stderr))) await sleep(50);
          return m[1]!;
        })(),
        30_000,
        'harness run to print the watch URL',
        () => stderr,
      );
      await withDeadline(
        (async () => {
          while (!existsSync(held)) await sleep(50);
        })(),
        30_000,
        'the held test to launch its QEMU',
      );
      const pid = Number(readFileSync(held, 'utf8'));
      const live = await wsClient(`${url.replace(/^http/, 'ws')}live`);
      // The server reads the results file every 500 ms: the first result shows in "hello" or in the "updated" after it.
      const seen = await until(live, (ms) => ms.some((x) => x.summary === '1 passed, 0 failed, 0 skipped'));
      expect(seen[0]).to.have.property('type', 'hello');
      expect(seen.at(-1)).to.have.property('type', seen.length > 1 ? 'updated' : 'hello');
      expect(await (await get(url)).text()).to.include('finishes first');
      const listed = (await (await get(`${url}machines`)).json()) as RunningMachine[];
      expect(listed).to.have.length(1);
      expect(listed[0]).to.include({ name: 'none', pid, test: join('watched', 'holds-a-qemu-until-told') });
      const q = await wsClient(`${url.replace(/^http/, 'ws')}qmp/${pid}`);
      expect(await q.next()).to.include('"QMP"');
      q.send({ execute: 'query-status', id: 1 });
      expect(JSON.parse(await q.next())).to.deep.equal({ return: { status: 'prelaunch', running: false }, id: 1 });
      q.send({ execute: 'quit', id: 2 });
      expect(JSON.parse(await q.next()))
        .to.have.nested.property('error.desc')
        .that.includes('read-only');
      writeFileSync(go, '');
      // The run's end: every result in, then the sockets closed.
      const ended = JSON.parse(await live.next(30_000));
      expect(ended).to.deep.equal({ type: 'ended', summary: '2 passed, 0 failed, 0 skipped' });
      const r = await withDeadline(p, 30_000, 'harness run to exit after its run');
      expect(r.exitCode, stderr).to.equal(0);
    } finally {
      writeFileSync(go, '');
      p.kill('SIGKILL');
      await p;
    }
  });
});

describe('harness run --watch: the served page in a browser (headless Chromium)', function () {
  this.timeout(60_000);
  let browser: Browser | undefined;
  let watch: WatchServer | undefined;
  const root = mkdtempSync(join(tmpdir(), 'harness-watch-page-'));
  before(function () {
    requireChromium(this);
  });
  after(async () => {
    await watch?.close();
    await browser?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('reloads itself when a result arrives, and says when the run ended; no script error, nothing fetched but the server', async () => {
    mkdirSync(join(root, 'tests'), { recursive: true });
    const jsonl = join(root, 'results.jsonl');
    writeFileSync(jsonl, '');
    watch = await startWatch({ runDir: root, resultsJsonl: jsonl, debounceMs: 100, pollMs: 100 });
    browser = await launchChromium();
    const { page } = browser;
    await page.goto(watch.url, { timeout: 20_000 });
    const badge = page.locator('#harness-live');
    await page.waitForFunction(() => document.getElementById('harness-live')?.textContent === 'live: 0 passed, 0 failed, 0 skipped', undefined, {
      timeout: 10_000,
    });
    const add = (r: TestResult) => appendFileSync(jsonl, `${JSON.stringify(r)}\n`);
    add({ suite: 'watched', title: 'the first to finish', state: 'passed', durationMs: 5 });
    // Only a reload brings the new test's block: the page itself is static.
    const first = page.locator('details.test', { hasText: 'the first to finish' });
    await first.waitFor({ timeout: 10_000 });
    expect(await first.evaluate((d) => (d as HTMLDetailsElement).open), 'a passed test starts closed').to.equal(false);
    await first.locator('summary').click();
    await page.fill('#filter', 'the');
    add({ suite: 'watched', title: 'the second, failed', state: 'failed', durationMs: 5, error: 'Error: on purpose' });
    const second = page.locator('details.test', { hasText: 'the second, failed' });
    await second.waitFor({ timeout: 10_000 });
    expect(await page.locator('p.counts').first().innerText()).to.match(/^1 passed\s*1 failed\s*0 skipped$/);
    // What the person had set survives the reload; the new failure opens as the report opens failures.
    expect(await first.evaluate((d) => (d as HTMLDetailsElement).open), 'the test opened before the reload').to.equal(true);
    expect(await second.evaluate((d) => (d as HTMLDetailsElement).open), 'a new failure').to.equal(true);
    expect(await page.inputValue('#filter')).to.equal('the');
    await watch.close();
    watch = undefined;
    await page.waitForFunction(() => document.getElementById('harness-live')?.textContent?.startsWith('run ended: '), undefined, { timeout: 10_000 });
    expect(await badge.textContent()).to.equal('run ended: 1 passed, 1 failed, 0 skipped');
    expect(browser.errors, JSON.stringify(browser.requests)).to.deep.equal([]);
    expect(browser.requests.filter((u) => !u.startsWith('http://127.0.0.1:') && !u.startsWith('ws://127.0.0.1:'))).to.deep.equal([]);
  });
});
