import { expect } from 'chai';
import { execa, type ResultPromise } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { QemuBinary } from '../../harness/qemu/binary.js';
import { withParentDeath } from '../../harness/qemu/parent-death.js';
import { requireQemuFeatures } from '../../harness/testing/prereqs.js';
import { DeadlineError, withDeadline } from '../../harness/util/deadline.js';
import { pasidEndpoint } from '../../harness/vfio-user/devices/index.js';
import { checkVfioUserNeedsCachingMode, type MachineConfigLike } from '../../harness/vfio-user/preflight.js';
import { startVfioUserServer, type VfioUserServer } from '../../harness/vfio-user/server.js';

/*
 * The caching-mode failure only shows once a guest enables DMA remapping, so
 * these tests play the guest with QEMU's qtest accelerator: over the qtest
 * socket they write VT-d's registers and tables directly, as a kernel would.
 * (Machine runs TCG or KVM only, so QEMU is launched here by hand.)
 */

const DMAR = 0xfed9_0000; // q35's VT-d register base
const REG = { GCMD: 0x18, GSTS: 0x1c, RTADDR: 0x20, IOTLB: 0xf8 } as const; // IOTLB at ECAP.IRO*16+8 (IRO 0xf in QEMU)
const GCMD_TE = 0x8000_0000;
const GCMD_SRTP = 0x4000_0000;
const IOTLB_GLOBAL_INVALIDATE = 0x9000_0000_0000_0000n; // IVT | IIRG=global

/** Tables in guest RAM: root table, context table for bus 1, then second-level page tables. */
const TABLES = 0x100_0000;
const ROOT = TABLES;
const CONTEXT = TABLES + 0x1000;
const L3 = TABLES + 0x2000;
const L2 = TABLES + 0x3000;
const L1 = TABLES + 0x4000;

const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

/** The qtest protocol: one command a line, one "OK ..." or "FAIL ..." line back. */
class Qtest {
  private buf = '';
  private closed = false;
  private wake: (() => void) | undefined;
  constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    const poke = () => {
      const w = this.wake;
      this.wake = undefined;
      w?.();
    };
    sock.on('data', (d: string) => {
      this.buf += d;
      poke();
    });
    sock.on('close', () => {
      this.closed = true;
      poke();
    });
    sock.on('error', () => (this.closed = true));
  }

  async cmd(line: string, ms = 10_000): Promise<string> {
    const from = this.buf.length;
    this.sock.write(line + '\n');
    const reply = withDeadline(
      (async () => {
        for (;;) {
          const nl = this.buf.indexOf('\n', from);
          if (nl >= 0) return this.buf.slice(from, nl);
          if (this.closed) throw new Error(`qtest: QEMU closed the connection during "${line.slice(0, 60)}"`);
          await new Promise<void>((r) => (this.wake = r));
        }
      })(),
      ms,
      `qtest "${line.slice(0, 60)}"`,
    );
    const r = await reply;
    if (!r.startsWith('OK')) throw new Error(`qtest "${line.slice(0, 60)}": ${r}`);
    return r;
  }

  close(): void {
    this.sock.destroy();
  }
}

interface Launched {
  proc: ResultPromise;
  qtest: Qtest;
  stderr: () => string;
}

async function launchQtest(bin: QemuBinary, dir: string, config: Required<Pick<MachineConfigLike, 'devices'>>): Promise<Launched> {
  const qtestPath = join(dir, 'qtest.sock');
  const listener: Server = createServer();
  await new Promise<void>((r) => listener.listen(qtestPath, r));
  const args = [
    ...bin.prefixArgs,
    ...bin.baseArgs,
    ...['-M', 'q35', '-accel', 'qtest', '-qtest', `unix:${qtestPath}`, '-qtest-log', '/dev/null', '-nodefaults', '-display', 'none', '-m', '256M'],
    ...config.devices.flatMap((d) => ['-device', JSON.stringify(d)]),
  ];
  // Like a Machine's QEMU, it dies with the harness even while stopped.
  const spawned = withParentDeath(bin.command, args);
  const proc = execa(spawned.command, spawned.args, { env: { ...process.env, ...bin.env }, extendEnv: false, reject: false, stdin: 'ignore', cleanup: true });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  try {
    const sock = await withDeadline(
      Promise.race([
        new Promise<Socket>((r) => listener.once('connection', r)),
        proc.then((x) => Promise.reject(new Error(`QEMU exited before connecting qtest (${x.signal ?? x.exitCode}): ${stderr}`))),
      ]),
      20_000,
      'QEMU connecting its qtest socket',
    );
    return { proc, qtest: new Qtest(sock), stderr: () => stderr };
  } finally {
    listener.close();
  }
}

/** The server's handshake, or QEMU's exit with its stderr, whichever comes first. */
async function handshake(l: Launched, server: VfioUserServer): Promise<void> {
  const died = l.proc.then((x) => {
    throw new Error(`QEMU exited (${x.signal ?? x.exitCode}) before the vfio-user handshake:\n${l.stderr()}`);
  });
  died.catch(() => {});
  await Promise.race([server.waitForHandshake(10_000), died]);
}

/** Only ever our own child, by its PID: SIGTERM, then SIGKILL. */
async function stop(l: Launched | undefined): Promise<void> {
  if (!l || l.proc.exitCode !== null || l.proc.signalCode !== null) return;
  l.qtest.close();
  l.proc.kill('SIGTERM');
  try {
    await withDeadline(l.proc, 5000, 'QEMU exiting on SIGTERM');
  } catch (e) {
    if (!(e instanceof DeadlineError)) throw e;
    l.proc.kill('SIGKILL');
    await withDeadline(l.proc, 5000, 'QEMU exiting on SIGKILL');
  }
}

/**
 * What a guest kernel does to turn on DMA remapping: number the root port's
 * secondary bus (so the device is 01:00.0), point a root entry for bus 1 at a
 * context table whose entry for devfn 0 uses a (so far empty) 3-level
 * second-level page table in domain 1, set the root table, enable translation.
 */
async function enableRemapping(q: Qtest): Promise<void> {
  await q.cmd('outl 0xcf8 0x80000818'); // bus 0, device 1 (rp0), register 0x18
  await q.cmd('outl 0xcfc 0x00010100'); // primary 0, secondary 1, subordinate 1
  await q.cmd(`writeq ${hex(ROOT + 16 * 1)} ${hex(CONTEXT | 1)}`);
  await q.cmd(`writeq ${hex(CONTEXT)} ${hex(L3 | 1)}`); // present, translation type 0, page table at L3
  await q.cmd(`writeq ${hex(CONTEXT + 8)} ${hex((1 << 8) | 1)}`); // domain 1, AW 1 (39 bits, 3 levels)
  await q.cmd(`writeq ${hex(DMAR + REG.RTADDR)} ${hex(ROOT)}`);
  await q.cmd(`writel ${hex(DMAR + REG.GCMD)} ${hex(GCMD_SRTP)}`);
  await q.cmd(`writel ${hex(DMAR + REG.GCMD)} ${hex(GCMD_TE)}`);
}

/** Maps `pages` 4 KiB pages at IOVA 0 in the page tables enableRemapping() set up. */
async function writePageTables(q: Qtest, pages: number): Promise<void> {
  const tables = Math.ceil(pages / 512);
  await q.cmd(`writeq ${hex(L3)} ${hex(L2 | 3)}`);
  // L2 entries pointing at L1 tables, then the L1 tables a page each.
  for (let t = 0; t < tables; t++) await q.cmd(`writeq ${hex(L2 + 8 * t)} ${hex((L1 + 0x1000 * t) | 3)}`);
  for (let t = 0; t < tables; t++) {
    const b = Buffer.alloc(4096);
    for (let j = 0; j < 512 && t * 512 + j < pages; j++) b.writeBigUInt64LE(BigInt(0x200_0000 + (t * 512 + j) * 4096) | 3n, 8 * j);
    await q.cmd(`write ${hex(L1 + 0x1000 * t)} 4096 0x${b.toString('hex')}`);
  }
}

/** Maps `count` 2 MiB pages at IOVA 0 as level-2 leaves (PS, bit 7): QEMU's VT-d has SLLPS. */
async function writeLargePages(q: Qtest, count: number): Promise<void> {
  await q.cmd(`writeq ${hex(L3)} ${hex(L2 | 3)}`);
  const b = Buffer.alloc(8 * count);
  for (let i = 0; i < count; i++) b.writeBigUInt64LE(BigInt(0x400_0000 + i * 0x20_0000) | 0x83n, 8 * i);
  await q.cmd(`write ${hex(L2)} ${b.length} 0x${b.toString('hex')}`);
}

describe('vfio-user-pci behind intel-iommu needs caching-mode=on (qtest plays the guest)', function () {
  this.timeout(60_000);
  let bin: QemuBinary;
  let dir: string;
  let server: VfioUserServer;
  let launched: Launched | undefined;

  before(async function () {
    bin = (await requireQemuFeatures(this, 'x86_64', { accel: 'qtest' }, { device: 'vfio-user-pci' })).binary;
  });
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-cm-'));
    server = await startVfioUserServer({ socketPath: join(dir, 'dev.sock'), device: pasidEndpoint });
  });
  afterEach(async () => {
    await stop(launched);
    launched = undefined;
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const config = (iommu: Record<string, unknown>): Required<Pick<MachineConfigLike, 'devices'>> => ({
    devices: [
      { driver: 'intel-iommu', ...iommu },
      { driver: 'pcie-root-port', id: 'rp0', chassis: 1, bus: 'pcie.0', addr: '0x1.0' },
      { driver: 'vfio-user-pci', id: 'vu0', bus: 'rp0', socket: { type: 'unix', path: server.socketPath } },
    ],
  });

  it('without caching-mode: the check refuses, and QEMU really aborts once remapping is enabled', async () => {
    const c = config({});
    expect(checkVfioUserNeedsCachingMode(c)?.message).to.match(/vfio-user-pci vu0 behind intel-iommu needs caching-mode=on/);
    launched = await launchQtest(bin, dir, c);
    await handshake(launched, server);
    await enableRemapping(launched.qtest).catch((e: Error) => expect(e.message).to.match(/closed the connection/));
    const exit = await withDeadline(launched.proc, 10_000, 'QEMU aborting');
    expect(exit.signal).to.equal('SIGABRT');
    expect(launched.stderr()).to.include('device 01.00.0 requires caching mode');
    expect(launched.stderr()).to.include('vfio: DMA mapping failed, unable to continue');
  });

  it('with caching-mode=on: the check passes, remapping works, and each mapped page is a DMA_MAP round trip', async function () {
    const c = config({ 'caching-mode': true });
    expect(checkVfioUserNeedsCachingMode(c)).to.equal(undefined);
    launched = await launchQtest(bin, dir, c);
    await handshake(launched, server);
    const q = launched.qtest;
    await enableRemapping(q);
    expect(await q.cmd(`readl ${hex(DMAR + REG.GSTS)}`)).to.match(/^OK 0x0*c0000000$/);

    // A global IOTLB invalidation makes QEMU walk the tables and map each new
    // page through vfio, one DMA_MAP at a time waiting for its reply: the path
    // an L1 kernel's mappings take under caching mode.
    const pages = 16384;
    await writePageTables(q, pages);
    const maps0 = server.stats.dmaMaps;
    const t0 = process.hrtime.bigint();
    await q.cmd(`writeq ${hex(DMAR + REG.IOTLB)} ${hex(IOTLB_GLOBAL_INVALIDATE)}`, 50_000);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    expect(server.stats.dmaMaps - maps0).to.equal(pages);
    expect(server.stats.errorReplies).to.equal(0);
    expect(launched.proc.exitCode, 'QEMU still running').to.equal(null);
    this.test!.title += ` (${pages} DMA_MAPs in ${seconds.toFixed(2)} s: ${Math.round(pages / seconds)}/s)`;
  });

  it('with caching-mode=on: a 2 MiB second-level page is one DMA_MAP (512 times fewer messages than 4 KiB pages)', async () => {
    launched = await launchQtest(bin, dir, config({ 'caching-mode': true }));
    await handshake(launched, server);
    const q = launched.qtest;
    await enableRemapping(q);
    const largePages = 32; // 64 MiB, as many bytes as the 16384 pages above
    await writeLargePages(q, largePages);
    const before = { maps: server.stats.dmaMaps, bytes: server.stats.dmaMapBytes };
    await q.cmd(`writeq ${hex(DMAR + REG.IOTLB)} ${hex(IOTLB_GLOBAL_INVALIDATE)}`);
    expect(server.stats.dmaMaps - before.maps).to.equal(largePages);
    expect(server.stats.dmaMapBytes - before.bytes).to.equal(largePages * 0x20_0000);
  });
});
