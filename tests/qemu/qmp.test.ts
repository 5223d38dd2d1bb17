import { expect } from 'chai';
import { join } from 'node:path';
import { QmpClient } from '../../harness/qmp/client.js';
import { QmpCommandError, QmpDisconnectedError, QmpMessageTooLargeError, QmpProtocolError } from '../../harness/qmp/errors.js';
import { DEFAULT_MAX_MESSAGE_BYTES, MAX_NESTING } from '../../harness/qmp/framing.js';
import type { MachineDescription } from '../../harness/qemu/argv.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { DeadlineError } from '../../harness/util/deadline.js';
import { freeLoopbackPort } from '../../harness/util/net.js';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';

const q35: MachineDescription = { arch: 'x86_64', machine: { type: 'q35' }, paused: true };

describe('QMP client against real QEMU', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const machines = useMachines();

  it('negotiates capabilities, enabling oob when offered', async () => {
    const m = await machines.launch(q35);
    expect(m.qmp.greeting.version.qemu.major).to.be.a('number');
    expect(m.qmp.greeting.capabilities).to.include('oob');
    expect(m.qmp.conn.oobEnabled).to.equal(true);
    expect(await m.qmp.queryStatus()).to.deep.equal({ status: 'prelaunch', running: false });
  });

  it('matches 200 concurrent replies to their commands by id', async () => {
    const m = await machines.launch(q35);
    const calls = Array.from({ length: 200 }, (_, i) => (i % 2 ? m.qmp.qomGet('/machine', 'type') : m.qmp.execute('query-name')));
    const results = await Promise.all(calls);
    results.forEach((r, i) => {
      if (i % 2) expect(r).to.match(/^pc-q35-/);
      else expect(r).to.deep.equal({});
    });
    const ids = readFileSync(join(m.artifactsDir, 'qmp.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { dir: string; msg: { id?: string } })
      .filter((l) => l.dir === 'out')
      .map((l) => l.msg.id);
    expect(new Set(ids).size).to.equal(ids.length);
  });

  // The limits must never refuse what QEMU itself sends: its largest answers
  // are the schema and HMP dumps, its deepest the schema's nested types.
  it("QEMU's largest answers fit the default message size limit with room to spare, and a small limit refuses them by size", async function () {
    const port = await freeLoopbackPort();
    const m = await machines.launch({ ...q35, extraArgs: ['-qmp', `tcp:127.0.0.1:${port},server=on,wait=off`] });
    const sizes: Record<string, number> = {};
    let last = 0;
    const untap = m.qmp.conn.tap((_msg, raw) => (last = Buffer.byteLength(raw)));
    for (const [what, run] of [
      ['query-qmp-schema', () => m.qmp.execute('query-qmp-schema')],
      ['info mtree', () => m.qmp.hmp('info mtree')],
      ['info qtree', () => m.qmp.hmp('info qtree')],
      ['qom-list-types', () => m.qmp.execute('qom-list-types')],
    ] as const) {
      await run();
      sizes[what] = last;
    }
    untap();
    const largest = Math.max(...Object.values(sizes));
    expect(largest, JSON.stringify(sizes)).to.be.below(DEFAULT_MAX_MESSAGE_BYTES / 8);
    const small = await QmpClient.connectTcp('127.0.0.1', port, { maxMessageBytes: 64 << 10 });
    const err = await small.execute('query-qmp-schema').catch((e: unknown) => e);
    await small.close();
    expect(err).to.be.instanceOf(QmpMessageTooLargeError).and.include({ limit: 64 << 10 });
    expect(await m.qmp.queryStatus(), 'the machine is unharmed').to.have.property('status', 'prelaunch');
    this.test!.title += ` (${Object.entries(sizes).map(([k, v]) => `${k} ${v} bytes`).join(', ')}; limit ${DEFAULT_MAX_MESSAGE_BYTES}, nesting ${MAX_NESTING})`;
  });

  it('raises QEMU refusals as QmpCommandError with class and desc', async () => {
    const m = await machines.launch(q35);
    const err = await m.qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpCommandError);
    expect(err).to.include({ command: 'no-such-command', errorClass: 'CommandNotFound' });
    expect((err as QmpCommandError).desc).to.match(/no-such-command/);
  });

  it('delivers events to a listener registered before the command', async () => {
    const m = await machines.launch(q35);
    const resumed = m.qmp.listen({ names: ['RESUME'] });
    await m.qmp.execute('cont');
    const stopped = m.qmp.listen({ names: ['STOP'] });
    await m.qmp.execute('stop');
    expect((await resumed.next(5000)).event).to.equal('RESUME');
    const stop = await stopped.next(5000);
    expect(stop.event).to.equal('STOP');
    expect(stop.timestamp.seconds).to.be.greaterThan(0);
    // An event that arrived before waiting stays queued, not lost.
    expect(resumed.pending).to.have.length(0);
  });

  it('filters events by predicate and times out with a DeadlineError naming the event', async () => {
    const m = await machines.launch(q35);
    const never = m.qmp.listen({ names: ['DEVICE_DELETED'], where: (e) => e.data.device === 'nope' });
    const err = await never.next(200).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(DeadlineError);
    expect(String(err)).to.match(/DEVICE_DELETED.*200 ms/);
  });

  it('runs exec-oob commands and types a refused one', async () => {
    const m = await machines.launch(q35);
    expect(await m.qmp.execute('query-yank', undefined, { oob: true })).to.be.an('array');
    const err = await m.qmp.execute('query-status', undefined, { oob: true }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpCommandError);
    expect((err as QmpCommandError).desc).to.match(/does not support OOB/);
  });

  it('gives a command that gets no answer a deadline (QEMU stopped with SIGSTOP)', async () => {
    const m = await machines.launch(q35);
    m.kill('SIGSTOP');
    try {
      const err = await m.qmp.execute('query-status', undefined, { timeoutMs: 300 }).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(DeadlineError);
      expect(String(err)).to.match(/query-status.*300 ms/);
    } finally {
      m.kill('SIGCONT');
    }
    // The late reply is ignored; the connection keeps working.
    expect(await m.qmp.queryStatus()).to.have.property('status', 'prelaunch');
  });

  it('rejects every pending command at once when QEMU is killed, with exit status and stderr', async () => {
    const m = await machines.launch(q35);
    m.kill('SIGSTOP'); // hold the replies so the commands are really pending
    const pending = [m.qmp.queryStatus(), m.qmp.execute('query-name'), m.qmp.qomGet('/machine', 'type')];
    const events = m.qmp.listen({ names: ['RESUME'] }).next(30_000);
    m.kill('SIGKILL');
    const errs = await Promise.all([...pending, events].map((p) => p.then(() => undefined, (e: unknown) => e)));
    for (const e of errs) {
      expect(e).to.be.instanceOf(QmpDisconnectedError);
      expect(String(e)).to.match(/killed by SIGKILL/).and.include(m.artifactsDir);
    }
    expect(m.exit?.signal).to.equal('SIGKILL');
  });

  it('speaks QMP over TCP and over a unix server socket QEMU listens on', async () => {
    const port = await freeLoopbackPort();
    const sock = join(await mkdtemp(join(tmpdir(), 'harness-test-')), 'qmp.sock'); // artifact paths can exceed 108 bytes
    await machines.launch({
      ...q35,
      extraArgs: ['-qmp', `tcp:127.0.0.1:${port},server=on,wait=off`, '-qmp', `unix:${sock},server=on,wait=off`],
    });
    for (const client of [await QmpClient.connectTcp('127.0.0.1', port), await QmpClient.connectUnix(sock)]) {
      expect(await client.queryStatus()).to.have.property('status', 'prelaunch');
      await client.close();
    }
  });

  it('refuses a peer that does not greet like QMP', async () => {
    // HMP on a socket chardev: a real QEMU monitor, but not QMP.
    const sock = join(await mkdtemp(join(tmpdir(), 'harness-test-')), 'hmp.sock');
    await machines.launch({ ...q35, extraArgs: ['-chardev', `socket,id=h,path=${sock},server=on,wait=off`, '-mon', 'chardev=h,mode=readline'] });
    const err = await QmpClient.connectUnix(sock, { greetingTimeoutMs: 3000 }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpProtocolError);
    expect(String(err)).to.match(/unexpected byte|not a QMP greeting/);
  });
});
