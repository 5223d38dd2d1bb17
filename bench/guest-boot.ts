import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, guestDescription } from '../harness/guest/boot.js';
import { findGuestImage, type GuestImage } from '../harness/guest/image.js';
import { VirtualLab } from '../harness/lab/virtual-lab.js';
import { buildArgv } from '../harness/qemu/argv.js';
import { findQemu } from '../harness/qemu/binary.js';
import { Machine } from '../harness/qemu/machine.js';
import { median, type BenchResult } from './stats.js';

const RUNS = 5;
const INIT_LINE = 'harness-init: started';

/**
 * The floor: the same QEMU, kernel and initramfs spawned raw, timed to the
 * init's first console line. The harness's number is launch to the agent's
 * first answer (init started, agent port open, a round trip).
 */
async function rawBootToInit(image: GuestImage): Promise<number> {
  const bin = findQemu('x86_64');
  const dir = mkdtempSync(join(tmpdir(), 'bench-boot-'));
  const socks = { qmp: join(dir, 'q.sock'), serial0: join(dir, 's.sock'), agent: join(dir, 'a.sock') };
  const servers = Object.values(socks).map((p) => {
    const s = createServer();
    s.listen(p);
    return s;
  });
  const desc = guestDescription({ image });
  const argv = [...bin.prefixArgs, ...bin.baseArgs, ...buildArgv(desc, { qmpSocket: socks.qmp, chardevSockets: { serial0: socks.serial0, agent: socks.agent }, exitWithParent: true })];
  const t0 = performance.now();
  const proc = spawn(bin.command, argv, { env: { ...process.env, ...bin.env }, stdio: 'ignore' });
  const serial = await new Promise<Socket>((r) => servers[1]!.once('connection', r));
  const ms = await new Promise<number>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error('raw boot: no init line within 60 s')), 60_000);
    serial.on('data', (d) => {
      text += String(d);
      if (text.includes(INIT_LINE)) {
        clearTimeout(timer);
        resolve(performance.now() - t0);
      }
    });
  });
  proc.kill('SIGKILL');
  await new Promise((r) => proc.once('exit', r));
  for (const s of servers) s.close();
  rmSync(dir, { recursive: true, force: true });
  return ms;
}

export async function benchGuestBoot(): Promise<BenchResult> {
  const found = findGuestImage('x86_64');
  if (!found.ok) return { name: 'guest boot', rows: [], notes: [`not measured: ${found.reason}`] };
  const image = found.image;
  const raw: number[] = [];
  const ours: number[] = [];
  const l1: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    raw.push(await rawBootToInit(image));
    const dir = mkdtempSync(join(tmpdir(), 'bench-guest-'));
    const g = await bootGuest((d) => Machine.launch(d, { name: 'bench-guest', artifactsDir: dir }), { image });
    ours.push(g.agentReadyMs);
    await g.machine.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }
  for (let i = 0; i < 3; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'bench-l1-'));
    const lab = await VirtualLab.start((d) => Machine.launch(d, { name: 'bench-l1', artifactsDir: join(dir, 'machine') }), { image, resultsDir: join(dir, 'results') });
    l1.push(lab.guest.agentReadyMs);
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const floor = median(raw);
  return {
    name: 'guest boot under TCG (2 cores)',
    rows: [
      { what: 'raw QEMU: spawn to init’s first line (median)', value: floor, unit: 'ms' },
      {
        what: 'harness: launch to agent ready (median)',
        value: median(ours),
        unit: 'ms',
        ratio: { against: 'raw boot to init', value: median(ours) / floor, target: '<= 10 s', met: median(ours) <= 10_000 },
      },
      {
        what: 'virtual lab L1 (9p root): launch to agent ready',
        value: median(l1),
        unit: 'ms',
        ratio: { against: 'raw boot to init', value: median(l1) / floor, target: '<= 20 s', met: median(l1) <= 20_000 },
      },
    ],
  };
}
