import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { QmpClient } from '../harness/qmp/client.js';
import { buildArgv, type MachineDescription } from '../harness/qemu/argv.js';
import { findQemu } from '../harness/qemu/binary.js';
import { Machine } from '../harness/qemu/machine.js';
import { cacheDir, repoRoot } from '../harness/util/paths.js';
import { median, percentile, type BenchResult } from './stats.js';

const SEQUENTIAL = 4000;
const CONCURRENT = 5000;
const LAUNCHES = 15;

/** The floor: a bare socket, a write and a wait for the reply's newline, nothing else. */
async function rawClient(path: string): Promise<{ roundTrip: () => Promise<void>; close: () => void }> {
  const s = connect(path);
  s.on('error', () => {});
  await new Promise((r) => s.once('connect', r));
  let buf = '';
  let wake: (() => void) | undefined;
  s.setEncoding('utf8');
  s.on('data', (d: string) => {
    buf += d;
    if (wake && buf.includes('\n')) wake();
  });
  const nextLine = () =>
    new Promise<void>((resolve) => {
      const take = () => {
        buf = buf.slice(buf.indexOf('\n') + 1);
        wake = undefined;
        resolve();
      };
      if (buf.includes('\n')) take();
      else wake = take;
    });
  await nextLine(); // greeting
  s.write('{"execute":"qmp_capabilities"}\n');
  await nextLine();
  let id = 0;
  return {
    // The same bytes the harness sends, id included: QEMU itself answers a
    // command with an id measurably slower (~0.05-0.08 ms here), so a floor
    // without ids would measure QEMU, not the client.
    roundTrip: async () => {
      s.write(`{"execute":"query-status","id":"r${++id}"}\n`);
      await nextLine();
    },
    close: () => s.destroy(),
  };
}

/**
 * Raw and harness round trips in alternating blocks on two monitors of the
 * same QEMU, so that drift (CPU frequency, QEMU warming up) hits both alike.
 */
async function interleavedRoundTrips(rawOp: () => Promise<unknown>, oursOp: () => Promise<unknown>, n: number): Promise<{ raw: number[]; ours: number[] }> {
  const raw: number[] = [];
  const ours: number[] = [];
  for (let i = 0; i < 100; i++) await Promise.all([rawOp(), oursOp()]); // warm-up
  const block = 100;
  for (let done = 0; done < n; done += block) {
    for (const [op, out] of [
      [rawOp, raw],
      [oursOp, ours],
    ] as const) {
      for (let i = 0; i < block; i++) {
        const t = performance.now();
        await op();
        out.push(performance.now() - t);
      }
    }
  }
  return { raw, ours };
}

async function oursSequentialAndThroughput(client: QmpClient, n: number, c: number): Promise<{ lat: number[]; throughput: number }> {
  for (let i = 0; i < 50; i++) await client.queryStatus();
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await client.queryStatus();
    lat.push(performance.now() - t);
  }
  const t = performance.now();
  await Promise.all(Array.from({ length: c }, () => client.queryStatus()));
  return { lat, throughput: c / ((performance.now() - t) / 1000) };
}

async function pythonPeer(path: string, sequential: number, concurrent: number): Promise<{ latenciesMs: number[]; throughput: number } | string> {
  const pyPath = join(cacheDir(), 'pyqmp', 'usr', 'lib', 'python3', 'dist-packages');
  if (!existsSync(pyPath)) return `python3-qemu-qmp not installed (scripts/install-pyqmp.sh)`;
  const r = await execa('python3', [join(repoRoot, 'bench', 'peers', 'qemu_qmp_peer.py'), path, String(sequential), String(concurrent)], {
    env: { PYTHONPATH: pyPath },
    reject: false,
    timeout: 120_000,
  });
  if (r.exitCode !== 0) return `qemu.qmp peer failed: ${r.stderr.slice(-500)}`;
  return JSON.parse(r.stdout) as { latenciesMs: number[]; throughput: number };
}

/**
 * Raw QEMU's own start-up: the same binary and argv the Machine would use,
 * spawned with no harness around it; times to the greeting and to the
 * capabilities reply on a bare socket.
 */
async function rawLaunch(desc: MachineDescription): Promise<{ greeting: number; negotiated: number }> {
  const bin = findQemu(desc.arch);
  const dir = mkdtempSync(join(tmpdir(), 'bench-raw-'));
  const sock = join(dir, 'qmp.sock');
  const server = createServer();
  await new Promise<void>((r) => server.listen(sock, r));
  const argv = [...bin.prefixArgs, ...bin.baseArgs, ...buildArgv(desc, { qmpSocket: sock, chardevSockets: {}, exitWithParent: true })];
  const t0 = performance.now();
  const proc = spawn(bin.command, argv, { env: { ...process.env, ...bin.env }, stdio: 'ignore' });
  const s = await new Promise<Socket>((r) => server.once('connection', r));
  s.on('error', () => {}); // the kill below resets it
  let greeting = 0;
  const negotiated = await new Promise<number>((resolve) => {
    let buf = '';
    s.on('data', (d) => {
      buf += String(d);
      if (!greeting && buf.includes('\n')) {
        greeting = performance.now() - t0;
        buf = buf.slice(buf.indexOf('\n') + 1);
        s.write('{"execute":"qmp_capabilities"}\n');
      } else if (greeting && buf.includes('\n')) resolve(performance.now() - t0);
    });
  });
  proc.kill('SIGKILL');
  await new Promise((r) => proc.once('exit', r));
  s.destroy();
  server.close();
  rmSync(dir, { recursive: true, force: true });
  return { greeting, negotiated };
}

export async function benchQmp(): Promise<BenchResult> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-qmp-'));
  const sock = join(dir, 'peer.sock');
  const rawSock = join(dir, 'raw.sock');
  const desc: MachineDescription = { arch: 'x86_64', machine: { type: 'q35' }, paused: true };
  const m = await Machine.launch(
    { ...desc, extraArgs: ['-qmp', `unix:${sock},server=on,wait=off`, '-qmp', `unix:${rawSock},server=on,wait=off`] },
    { name: 'bench-qmp' },
  );
  const notes: string[] = [];
  const rows: BenchResult['rows'] = [];
  try {
    const rawC = await rawClient(rawSock);
    let bare = await QmpClient.connectUnix(sock);
    const { raw, ours: oursLat } = await interleavedRoundTrips(rawC.roundTrip, () => bare.queryStatus(), SEQUENTIAL);
    rawC.close();
    // Throughput in alternating rounds (harness, qemu.qmp, ...), medians.
    const oursTp: number[] = [];
    const pyTp: number[] = [];
    let py: Awaited<ReturnType<typeof pythonPeer>> = 'not run';
    let pyLat: number[] = [];
    for (let round = 0; round < 3; round++) {
      oursTp.push((await oursSequentialAndThroughput(bare, 0, CONCURRENT)).throughput);
      await bare.close();
      py = await pythonPeer(sock, round === 0 ? SEQUENTIAL : 0, CONCURRENT);
      if (typeof py === 'string') break;
      if (round === 0) pyLat = py.latenciesMs;
      pyTp.push(py.throughput);
      bare = await QmpClient.connectUnix(sock);
    }
    if (bare.conn.isOpen) await bare.close();
    const ours = { lat: oursLat, throughput: median(oursTp) };
    const viaMachine = await oursSequentialAndThroughput(m.qmp, SEQUENTIAL, 0);
    const rawMed = median(raw);
    const oursMed = median(ours.lat);
    rows.push(
      { what: 'raw socket round trip (median)', value: rawMed, unit: 'ms' },
      {
        what: 'harness round trip (median)',
        value: oursMed,
        unit: 'ms',
        ratio: { against: 'raw floor', value: oursMed / rawMed, target: '<= 1.05x', met: oursMed / rawMed <= 1.05 },
      },
      { what: 'harness round trip (p99)', value: percentile(ours.lat, 99), unit: 'ms' },
      { what: 'harness round trip, Machine conn + transcript', value: median(viaMachine.lat), unit: 'ms', ratio: { against: 'raw floor', value: median(viaMachine.lat) / rawMed } },
    );
    if (typeof py === 'string') notes.push(`qemu.qmp peer not measured: ${py}`);
    else {
      const pyMed = median(pyLat);
      py.throughput = median(pyTp);
      rows.push({ what: 'qemu.qmp round trip (median)', value: pyMed, unit: 'ms', ratio: { against: 'raw floor', value: pyMed / rawMed } });
      rows.push({ what: 'harness throughput', value: ours.throughput, unit: 'cmd/s', ratio: { against: 'qemu.qmp', value: ours.throughput / py.throughput, target: '>= 1.2x', met: ours.throughput / py.throughput >= 1.2 } });
      rows.push({ what: 'qemu.qmp throughput', value: py.throughput, unit: 'cmd/s' });
    }
  } finally {
    await m.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }
  // Launch to ready, interleaved so that machine noise hits both alike.
  const rawN: number[] = [];
  const rawG: number[] = [];
  const oursL: number[] = [];
  for (let i = 0; i < LAUNCHES; i++) {
    const r = await rawLaunch(desc);
    rawG.push(r.greeting);
    rawN.push(r.negotiated);
    const t = performance.now();
    const mm = await Machine.launch(desc, { name: 'bench-launch', artifactsDir: mkdtempSync(join(tmpdir(), 'bench-launch-')) });
    oursL.push(performance.now() - t);
    await mm.shutdown();
  }
  const delta = median(oursL) - median(rawN);
  rows.push(
    { what: 'raw QEMU: spawn to greeting (median)', value: median(rawG), unit: 'ms' },
    { what: 'raw QEMU: spawn to capabilities reply', value: median(rawN), unit: 'ms' },
    { what: 'Machine.launch to ready (median)', value: median(oursL), unit: 'ms', ratio: { against: 'raw QEMU', value: median(oursL) / median(rawN) } },
    { what: 'launch overhead over raw QEMU', value: delta, unit: 'ms', ratio: { against: 'target 10 ms', value: delta / 10, target: '<= 10 ms', met: delta <= 10 } },
  );
  return { name: 'QMP client and launch (same QEMU, same run)', rows, notes };
}
