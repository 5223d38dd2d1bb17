import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import type { TestResult } from '../../harness/report/junit.js';
import { startWatch, type RunningMachine, type WatchServer } from '../../harness/report/watch.js';
import type { Machine } from '../../harness/qemu/machine.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { withDeadline } from '../../harness/util/deadline.js';
import type { WsClient } from '../../harness/qmp/ws-client.js';
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
