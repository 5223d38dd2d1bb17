import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../harness/qmp/client.js';
import { QmpError } from '../../harness/qmp/errors.js';
import { DeadlineError } from '../../harness/util/deadline.js';
import { countUncaught, fuzzSeed, heapAfterGc, openFds, pool, Rng, settleWithin } from '../support/fuzz.js';

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 3, "minor": 1, "major": 11}, "package": ""}, "capabilities": ["oob"]}}\r\n';
const CASES = 10_000;
const LIMIT = 64 << 10; // maxMessageBytes of every fuzzed connection
const MAX_QUEUED = 64;
/** Past this a promise counts as hung: well above every deadline the client is given (500 ms at most). */
const WATCHDOG_MS = 4000;

/** When the peer misbehaves, and what it does once it has. */
type Phase = 'greeting' | 'negotiation' | 'command';
interface Case {
  phase: Phase;
  kind: string;
  bytes: Buffer;
  then: 'hangup' | 'silent' | 'end';
}

const reply = (id: unknown) => `{"return": {}, "id": ${JSON.stringify(id)}}\n`;
const event = (name: unknown, i = 0) => `{"event": ${JSON.stringify(name)}, "data": {"i": ${i}}, "timestamp": {"seconds": 1, "microseconds": ${i}}}\n`;

/** Messages that are JSON but break QMP's grammar, each with the ids pending at the peer. */
const grammar: Array<(id: string) => string> = [
  () => '{"event": 5}',
  () => '{"event": null, "data": {}}',
  () => '{"event": ["STOP"]}',
  () => '{"event": "STOP", "data": "x"}',
  () => '{"event": "STOP", "timestamp": 7}',
  () => '{"event": "STOP", "id": "h9"}',
  (id) => `{"error": {"class": 5, "desc": "x"}, "id": "${id}"}`,
  (id) => `{"error": {"class": "GenericError"}, "id": "${id}"}`,
  (id) => `{"error": "GenericError", "id": "${id}"}`,
  (id) => `{"error": null, "id": "${id}"}`,
  (id) => `{"return": {}, "error": {"class": "GenericError", "desc": "x"}, "id": "${id}"}`,
  (id) => `{"return": {}, "event": "STOP", "id": "${id}"}`,
  (id) => `{"id": "${id}"}`,
  () => '{}',
  () => '{"foo": 1}',
  () => '{"return": {}, "id": "not-ours"}',
  () => '{"return": {}, "id": 7}',
  () => '{"return": {}, "id": null}',
  () => '{"return": {}}',
  () => GREETING.trim(),
  (id) => `{"__proto__": {"return": 1}, "id": "${id}"}`,
];

function makeCase(rng: Rng, ids: string[]): Case {
  const id = ids.length ? rng.pick(ids) : 'h1';
  const then = rng.pick(['hangup', 'silent', 'end'] as const);
  const valid = reply(id);
  const kinds: Array<[string, () => string | Buffer]> = [
    ['random bytes', () => rng.bytes(rng.int(1, 300))],
    ['truncated reply', () => valid.slice(0, rng.int(1, valid.length - 2))],
    ['grammar', () => rng.pick(grammar)(id) + '\n'],
    ['byte flips', () => {
      const b = Buffer.from(valid + event('STOP'));
      for (let n = rng.int(1, 4); n > 0; n--) b[rng.int(0, b.length - 1)] = rng.int(0, 255);
      return b;
    }],
    ['oversized, never ends', () => `{"return": "${'x'.repeat(LIMIT + rng.int(1, 4096))}`],
    ['oversized, complete', () => `{"return": "${'y'.repeat(LIMIT)}", "id": "${id}"}\n`],
    ['deep nesting', () => {
      const n = rng.int(500, 5000);
      return `{"return": ${'['.repeat(n)}${']'.repeat(n)}, "id": "${id}"}` + (rng.chance(0.5) ? '' : '}'.repeat(rng.int(1, 3)));
    }],
    ['unbalanced braces', () => '}'.repeat(rng.int(1, 5))],
    ['bad escapes', () => `{"return": "\\u12${rng.pick(['', 'x', 'zz'])}", "id": "${id}"}\n`],
    ['invalid UTF-8 inside a string', () => Buffer.concat([Buffer.from(`{"return": "`), rng.bytes(rng.int(1, 40)).map((b) => (b === 0x22 || b === 0x5c ? 0x41 : b | 0x80)), Buffer.from(`", "id": "${id}"}\n`)])],
    ['event flood', () => Array.from({ length: rng.int(MAX_QUEUED, 4 * MAX_QUEUED) }, (_, i) => event(rng.pick(['X', 'STOP', 'RESUME']), i)).join('') + (rng.chance(0.5) ? valid : '{"event": 5}\n')],
    ['whitespace then garbage', () => ' \r\n\t'.repeat(rng.int(1, 5000)) + rng.pick(['x', valid, '[1]', '"str"', '42'])],
    ['non-object JSON', () => rng.pick(['[]', '"s"', '1', 'null', 'true'])],
    ['reply, then garbage', () => valid + rng.bytes(rng.int(1, 50)).toString('latin1')],
  ];
  const [kind, make] = rng.pick(kinds);
  const made = make();
  return { phase: 'command', kind, bytes: typeof made === 'string' ? Buffer.from(made) : made, then };
}

/** A peer that speaks QMP until its case's phase, then sends the case's bytes, cut at random places. */
const peerCase = new WeakMap<Socket, Case>();

function playPeer(s: Socket, rng: Rng, cases: Case[]): void {
  // Each connection draws from its own generator, so the set of cases is the
  // seed's whatever order the connections are served in.
  s.on('error', () => {});
  const ids: string[] = [];
  let phase: Phase = 'greeting';
  let fired = false;
  const fire = () => {
    if (fired) return;
    fired = true;
    const c = makeCase(rng, ids);
    c.phase = phase;
    cases.push(c);
    peerCase.set(s, c);
    const pieces = rng.split(c.bytes, 8);
    const writeNext = () => {
      if (s.destroyed) return;
      const p = pieces.shift();
      if (p) {
        s.write(p);
        if (rng.chance(0.5)) setImmediate(writeNext);
        else writeNext();
        return;
      }
      if (c.then === 'hangup') s.destroy();
      else if (c.then === 'end') s.end();
      // 'silent': keep the socket open; the client's deadlines must end it.
    };
    writeNext();
  };
  const target: Phase = rng.pick(['greeting', 'negotiation', 'command', 'command', 'command']);
  if (target === 'greeting') {
    // Keep reading, or the client's hang-up is never seen.
    s.on('data', () => {});
    return fire();
  }
  s.write(GREETING);
  phase = 'negotiation';
  let buf = '';
  s.on('data', (d) => {
    buf += String(d);
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let msg: { execute?: string; id?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (typeof msg.id === 'string') ids.push(msg.id);
      if (fired) continue;
      if (msg.execute === 'qmp_capabilities' && target !== 'negotiation') {
        s.write(reply(msg.id));
        phase = 'command';
      } else setImmediate(fire); // let the rest of a burst of commands arrive first
    }
  });
}

const typed = (e: unknown): boolean => e instanceof QmpError || e instanceof DeadlineError;

describe('QMP fuzz: 10,000 malformed inputs over unix sockets, commands pending', function () {
  this.timeout(60_000);
  const seed = fuzzSeed(12);
  let dir: string;
  let server: Server | undefined;
  const peers: Socket[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qmp-fuzz-'));
  });
  after(async () => {
    peers.splice(0).forEach((s) => s.destroy());
    if (server) await new Promise((r) => server!.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it(`no uncaught error, no hung promise, no fd or memory left, every rejection typed (seed ${seed}; FUZZ_SEED replays)`, async function () {
    let accepted = 0;
    const cases: Case[] = [];
    const path = join(dir, 'qmp.sock');
    server = createServer((s) => {
      peers.push(s);
      s.on('close', () => peers.splice(peers.indexOf(s), 1));
      playPeer(s, new Rng(seed * 100_003 + accepted++), cases);
    });
    await new Promise<void>((r) => server!.listen(path, r));

    const fdsBefore = openFds();
    const heapBefore = heapAfterGc();
    const uncaught = countUncaught();
    const untyped: string[] = [];
    const hung: string[] = [];
    let settled = 0;
    let connections = 0;

    let fulfilled = 0;
    const t0 = performance.now();
    const note = (what: string, r: Awaited<ReturnType<typeof settleWithin>>) => {
      if (r.state === 'hung') hung.push(what);
      else {
        settled++;
        if (r.state === 'fulfilled') fulfilled++;
        else if (!typed(r.error)) untyped.push(`${what}: ${String(r.error)}`);
      }
    };
    try {
      // A connection whose client gave up (or closed early) before the peer's
      // turn plays no case; more connections are made until 10,000 have.
      let made = 0;
      while (cases.length < CASES) await pool(CASES - cases.length, 128, async () => {
        const i = made++;
        const opened = await settleWithin(
          QmpClient.connectUnix(path, { greetingTimeoutMs: 500, commandTimeoutMs: 100, maxMessageBytes: LIMIT, maxQueuedEvents: MAX_QUEUED }),
          WATCHDOG_MS,
        );
        note(`case ${i}: open`, opened);
        if (opened.state !== 'fulfilled') return;
        const c = opened.value;
        const rng = new Rng(~seed * 100_003 + i);
        const listener = c.listen({ names: ['X', 'STOP'] });
        const ops: Array<Promise<unknown>> = [listener.next(100)];
        for (let k = rng.int(1, 5); k > 0; k--) ops.push(c.execute('fuzz-me', { i, k }));
        if (rng.chance(0.1)) setTimeout(() => void c.close().catch(() => {}), rng.int(0, 20));
        for (const [k, r] of (await Promise.all(ops.map((p) => settleWithin(p, WATCHDOG_MS)))).entries()) note(`case ${i}: op ${k}`, r);
        note(`case ${i}: close`, await settleWithin(c.close(), WATCHDOG_MS));
      });
      connections = made;
    } finally {
      uncaught.stop();
    }
    const seconds = (performance.now() - t0) / 1000;
    // The peers' sockets end with the clients'; give their close events a turn.
    for (let i = 0; i < 50 && peers.length; i++) await new Promise((r) => setTimeout(r, 20));
    const fdsAfter = openFds();
    const heapGrowth = heapAfterGc() - heapBefore;

    expect(cases.length, 'cases played').to.be.at.least(CASES);
    expect(uncaught.errors.map(String), 'uncaught errors').to.deep.equal([]);
    expect(hung, `promises still pending after ${WATCHDOG_MS} ms`).to.deep.equal([]);
    expect(untyped.slice(0, 5), `${untyped.length} rejections that are not QmpError or DeadlineError`).to.deep.equal([]);
    expect(peers.map((s) => `${s.readyState}, case ${JSON.stringify({ ...peerCase.get(s), bytes: undefined })}`), 'peer sockets left open').to.deep.equal([]);
    expect(fdsAfter, `fds before ${fdsBefore}`).to.equal(fdsBefore);
    expect(heapGrowth, 'heap growth after GC, bytes').to.be.below(16 << 20);
    const kinds = new Set(cases.map((c) => c.kind)).size;
    const phases = new Set(cases.map((c) => c.phase));
    expect(phases.size, 'cases hit greeting, negotiation and commands').to.equal(3);
    this.test!.title += ` [${cases.length} cases of ${kinds} kinds over ${connections} connections, ${settled} promises settled (${fulfilled} fulfilled), ${seconds.toFixed(1)} s, heap ${(heapGrowth / 1e6).toFixed(1)} MB, fds ${fdsBefore}->${fdsAfter}]`;
  });
});
