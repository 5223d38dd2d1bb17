/**
 * QMP over QEMU's own WebSocket chardev (`-chardev socket,...,websocket=on`
 * with a QMP monitor on it): the handshake completes and the greeting arrives
 * as a binary frame, but a command sent afterwards usually goes unanswered
 * (seen in 10.0.13 and 11.1.3; QEMU's websock trace shows the frame decoded,
 * and handle_qmp_command never fires). Not always: it is a race that load
 * decides (under a loaded CI run both releases once answered on every
 * connection), so one connection proves nothing either way. The reproducer
 * gives QEMU TRIES such chardevs, connects to all of them and calls the
 * defect present when any of them goes unanswered. An HMP monitor on the same
 * kind of chardev answers, which rules out the client and the transport.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findQemu, qemuVersion } from '../qemu/binary.js';
import { monitorArgs } from '../qemu/capabilities.js';
import { Machine } from '../qemu/machine.js';
import { wsClient } from '../qmp/ws-client.js';
import { probeQemu } from '../viommu/probe.js';
import { freeLoopbackPort } from '../util/net.js';
import type { Reproducer, ReproOptions, ReproOutcome } from './types.js';

/** How long QEMU gets to answer a command (it answers a local QMP socket in milliseconds). */
const ANSWER_MS = 3000;

/** QMP WebSocket chardevs tried, one connection each; the defect is present if any goes unanswered. */
export const TRIES = 5;

/** QEMU's websocket chardev wants the "binary" subprotocol and reads binary frames only. */
async function connect(url: string): Promise<{ next: (ms: number, what: string) => Promise<string>; send: (text: string) => void; close: () => void }> {
  const c = await wsClient(url, {}, 'binary');
  return { next: c.next, send: c.sendBinary, close: c.close };
}

/**
 * QMP over WebSocket chardevs, one fresh connection to each of `ports` at once (each
 * its own chardev and QMP monitor: a chardev whose first client left does not
 * take a second one): reads the greeting, sends qmp_capabilities and waits
 * `answerMs`; the answer of each, or undefined where none came.
 */
export async function qmpOverWebsocketTries(ports: readonly number[], answerMs = ANSWER_MS): Promise<{ greeting: string; replies: Array<string | undefined> }> {
  // All at once: each waits out its own deadline, so the tries cost one wait, not five.
  const tries = await Promise.all(
    ports.map(async (port) => {
      const q = await connect(`ws://127.0.0.1:${port}/`);
      try {
        const greeting = await q.next(5000, 'the QMP greeting over the WebSocket chardev');
        q.send(`${COMMAND}\n`);
        return { greeting, reply: await q.next(answerMs, 'an answer to qmp_capabilities').catch(() => undefined) };
      } finally {
        q.close();
      }
    }),
  );
  return { greeting: tries[0]?.greeting ?? '', replies: tries.map((t) => t.reply) };
}

/** Free loopback ports for TRIES QMP WebSocket chardevs and one HMP chardev. */
export async function websocketPorts(): Promise<{ qmpPorts: number[]; hmpPort: number }> {
  const qmpPorts: number[] = [];
  for (let i = 0; i < TRIES; i++) qmpPorts.push(await freeLoopbackPort());
  return { qmpPorts, hmpPort: await freeLoopbackPort() };
}

/** The QEMU arguments for `ports.length` WebSocket chardevs wsq0.. with a QMP monitor each, and one with HMP. */
export function websocketMonitorArgs(features: Parameters<typeof monitorArgs>[0], qmpPorts: readonly number[], hmpPort: number): string[] {
  return [
    ...qmpPorts.flatMap((port, i) => ['-chardev', `socket,id=wsq${i},host=127.0.0.1,port=${port},server=on,wait=off,websocket=on`, ...monitorArgs(features, `mq${i}`, 'qmp', `wsq${i}`)]),
    '-chardev', `socket,id=wsh,host=127.0.0.1,port=${hmpPort},server=on,wait=off,websocket=on`,
    ...monitorArgs(features, 'mh', 'hmp', 'wsh'),
  ];
}

const COMMAND = '{"execute": "qmp_capabilities", "id": 1}';

/** Reads frames until `done` says the text so far is complete. */
async function readUntil(c: Awaited<ReturnType<typeof connect>>, done: (s: string) => boolean, ms: number, what: string): Promise<string> {
  let s = '';
  const end = Date.now() + ms;
  while (!done(s)) s += await c.next(Math.max(1, end - Date.now()), what);
  return s;
}

async function run(o: ReproOptions): Promise<ReproOutcome> {
  const bin = findQemu(o.arch, o.qemuPath ? { path: o.qemuPath } : {});
  const version = await qemuVersion(bin);
  // -object monitor-qmp where the binary has it (11.1 deprecates -mon), -mon on 10.0.
  const { features } = await probeQemu(bin);
  const { qmpPorts, hmpPort } = await websocketPorts();
  const m = await Machine.launch(
    {
      arch: o.arch,
      machine: { type: 'none' },
      paused: true,
      extraArgs: websocketMonitorArgs(features, qmpPorts, hmpPort),
    },
    { binary: bin, name: 'qemu', artifactsDir: o.artifactsDir },
  );
  try {
    const cmdline = readFileSync(join(o.artifactsDir, 'cmdline.txt'), 'utf8').trim();
    const { greeting, replies } = await qmpOverWebsocketTries(qmpPorts);
    const unanswered = replies.filter((r) => r === undefined).length;
    const answer = replies.find((r) => r !== undefined);
    // The control: HMP on the same kind of chardev, and QMP on the harness's own socket.
    const h = await connect(`ws://127.0.0.1:${hmpPort}/`);
    let hmp: string;
    try {
      await readUntil(h, (s) => s.includes('(qemu)'), 5000, 'the HMP prompt over the WebSocket chardev');
      h.send('info version\r\n');
      const v = `${version.major}.${version.minor}.${version.micro}`;
      hmp = (await readUntil(h, (s) => s.includes(v), 5000, 'HMP info version')).replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').trim();
    } finally {
      h.close();
    }
    const status = await m.qmp.queryStatus();
    return {
      present: unanswered > 0,
      qemu: { path: bin.path, version: version.text },
      cmdline,
      steps: [
        `connect to each of ${TRIES} QMP WebSocket chardevs (ws://127.0.0.1:${qmpPorts.join('/, :')}/) at once, subprotocol "binary"`,
        'read the greeting (one binary frame)',
        `send ${COMMAND} as a binary frame`,
        `wait ${ANSWER_MS} ms for the answer`,
      ],
      expected: `an answer {"return": {}, "id": 1} within ${ANSWER_MS} ms on every connection, as on a unix or TCP QMP socket`,
      seen: `greeting ${greeting.trim().slice(0, 160)}; then no answer within ${ANSWER_MS} ms on ${unanswered} of ${TRIES} connections${answer ? ` (the others: ${answer.trim()})` : ''}`,
      control: `HMP on a WebSocket chardev of the same QEMU answers "info version" (${JSON.stringify(hmp.split('\n').find((l) => /\d+\.\d+\.\d+/.test(l))?.trim() ?? hmp)}); QMP on a unix socket answers query-status (${status.status})`,
      artifactsDir: o.artifactsDir,
    };
  } finally {
    await m.shutdown();
  }
}

export const qmpWebsocket: Reproducer = {
  name: 'qmp-websocket-chardev',
  summary: "QMP over QEMU's WebSocket chardev greets but leaves commands unanswered (a race: most connections, not all)",
  found: 'tests/qemu/ws-bridge.test.ts (facts §10); QEMU 10.0.13 and 11.1.3',
  run,
};
