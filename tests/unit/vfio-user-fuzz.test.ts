import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient, isErrorReply, type Reply } from '../../harness/vfio-user/client.js';
import { PciRegion } from '../../harness/vfio-user/device-model.js';
import { pasidEndpoint } from '../../harness/vfio-user/devices/index.js';
import { Command, Errno, Flags, HEADER_SIZE, encodeDmaMap, encodeHeader, encodeRegionAccess, encodeRequest } from '../../harness/vfio-user/protocol.js';
import { startVfioUserServer, type VfioUserServer } from '../../harness/vfio-user/server.js';
import { countUncaught, fuzzSeed, heapAfterGc, openFds, pool, Rng, settleWithin } from '../support/fuzz.js';

const INPUTS = 10_000;
const SERVERS = 4;
const WATCHDOG_MS = 5000;
const CAPS = '{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576}}';
const ERRNOS = new Set<number>(Object.values(Errno));

function version(json = CAPS): Buffer {
  const j = Buffer.from(json + '\0');
  const b = Buffer.alloc(4 + j.length);
  j.copy(b, 4);
  return b;
}

/** What one input is; 'fatal' ones end the session (the server closes, or the stream can no longer be followed). */
type Input = { kind: string; fatal: boolean; send: (c: VfioUserClient) => Promise<Reply> | undefined };

function makeInput(rng: Rng): Input {
  const u64 = (): bigint => rng.pick([0n, 0x1000n, 0xfffn, 2n ** 32n, 2n ** 48n, 2n ** 57n, 2n ** 63n, 2n ** 64n - 0x1_0000n, 2n ** 64n - 1n, BigInt(rng.int(0, 2 ** 31)) << 12n]);
  const request = (kind: string, command: number, payload: Buffer): Input => ({ kind, fatal: false, send: (c) => c.request(command, payload, 2000) });
  /** A header whose size cannot be followed, and `extra` bytes after it. */
  const badSize = (kind: string, size: number, extra: number): Input => ({
    kind,
    fatal: true,
    send: (c) => {
      const b = Buffer.alloc(HEADER_SIZE + extra);
      encodeHeader({ msgId: 1, command: rng.int(0, 20), size, flags: 0, error: 0 }, b);
      c.sendRaw(b);
      return undefined;
    },
  });
  const kinds: Array<() => Input> = [
    () => request('random command and payload', rng.pick([rng.int(0, 20), 99, 0xffff]), rng.bytes(rng.int(0, 64))),
    () => {
      const b = Buffer.alloc(rng.pick([32, 32, 16, 40]));
      if (b.length >= 32) encodeDmaMap({ argsz: rng.pick([32, 32, 0, 0xffffffff]), flags: rng.pick([1, 2, 3, 0, 0xff]), offset: u64(), iova: u64(), size: u64() }, b, 0);
      return request('DMA_MAP with random fields', Command.DMA_MAP, b);
    },
    () => {
      const b = Buffer.alloc(24);
      b.writeUInt32LE(24, 0);
      b.writeUInt32LE(rng.pick([0, 1, 2, 3, 8]), 4);
      b.writeBigUInt64LE(u64() & (2n ** 64n - 1n), 8);
      b.writeBigUInt64LE(u64() & (2n ** 64n - 1n), 16);
      return request('DMA_UNMAP with random fields', Command.DMA_UNMAP, b);
    },
    () => {
      const count = rng.chance(0.05) ? (2 << 20) : rng.int(0, 8192);
      const b = Buffer.alloc(16 + (rng.chance(0.5) ? rng.int(0, 64) : 0));
      encodeRegionAccess({ offset: rng.pick([0, 4, 0xffc, 0x1000, 0x4000, rng.int(0, 2 ** 40)]), region: rng.pick([0, 2, 7, PciRegion.CONFIG, 9, 0xffffffff]), count }, b, 0);
      return request('region access with random fields', rng.pick([Command.REGION_READ, Command.REGION_WRITE]), b);
    },
    () => request('info request with random argsz and index', rng.pick([Command.DEVICE_GET_INFO, Command.DEVICE_GET_REGION_INFO, Command.DEVICE_GET_IRQ_INFO]), Buffer.from([rng.int(0, 255), 0, 0, 0, 0, 0, 0, 0, rng.int(0, 12), 0, 0, 0].slice(0, rng.int(0, 12)))),
    () => request('VERSION again, malformed', Command.VERSION, rng.pick([Buffer.alloc(2), version('not json'), Buffer.from([0, 0, 0, 0, 0x41]), version('{}'), Buffer.from([1, 0, 0, 0])])),
    () => ({ kind: 'posted request', fatal: false, send: (c) => void c.post(rng.int(0, 20), rng.bytes(rng.int(0, 40))) }),
    () => ({
      kind: 'a reply the server never asked for, or an unknown type',
      fatal: false,
      send: (c) => {
        const b = Buffer.alloc(HEADER_SIZE + 8);
        encodeHeader({ msgId: rng.int(0, 0xffff), command: rng.int(0, 20), size: b.length, flags: rng.pick([Flags.TYPE_REPLY, Flags.TYPE_REPLY | Flags.ERROR, rng.int(2, 15) | Flags.NO_REPLY]), error: rng.int(0, 200) }, b);
        c.sendRaw(b);
        return undefined;
      },
    }),
    () => badSize('size below the header', rng.int(0, 15), 0),
    () => badSize('size over the limit', rng.pick([0xffffffff, (1 << 20) + 33, 2 ** 31]), rng.int(0, 100)),
    () => ({ kind: 'random bytes', fatal: true, send: (c) => void c.sendRaw(rng.bytes(rng.int(1, 200))) }),
    () => ({ kind: 'half a message, then hang-up', fatal: true, send: (c) => void (c.sendRaw(encodeRequest(1, Command.DMA_MAP, Buffer.alloc(32)).subarray(0, rng.int(1, 47))), c.close()) }),
  ];
  return rng.pick(kinds)();
}

describe('vfio-user fuzz: 10,000 malformed inputs over many sessions', function () {
  this.timeout(90_000);
  const seed = fuzzSeed(12);
  let dir: string;
  const servers: VfioUserServer[] = [];
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-fuzz-'));
  });
  after(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
    rmSync(dir, { recursive: true, force: true });
  });

  it(`no uncaught error, no hung request, no fd or memory left, the log bounded, and every server still serves (seed ${seed}; FUZZ_SEED replays)`, async function () {
    const fdsBefore = openFds();
    const heapBefore = heapAfterGc();
    let logLines = 0;
    for (let i = 0; i < SERVERS; i++) servers.push(await startVfioUserServer({ socketPath: join(dir, `s${i}.sock`), device: pasidEndpoint, log: () => logLines++ }));
    const uncaught = countUncaught();
    const hung: string[] = [];
    const unanswered: string[] = [];
    const badErrno: string[] = [];
    const kinds = new Map<string, number>();
    let sent = 0;
    let sessions = 0;
    const t0 = performance.now();
    try {
      await pool(SERVERS, SERVERS, async (k) => {
        const server = servers[k]!;
        for (let s = 0; sent < INPUTS; s++) {
          const rng = new Rng(seed * 1_000_003 + k * 100_003 + s);
          if (server.sessionActive) await server.waitForSessionEnd(WATCHDOG_MS);
          const c = await VfioUserClient.connect(server.socketPath);
          sessions++;
          const ops: Array<[string, Promise<Reply>]> = [];
          if (rng.chance(0.9)) ops.push(['VERSION', c.request(Command.VERSION, version(), 2000)]);
          let fatal = false;
          for (let n = rng.int(1, 60); n > 0 && !fatal && sent < INPUTS; n--) {
            const input = makeInput(rng);
            sent++;
            kinds.set(input.kind, (kinds.get(input.kind) ?? 0) + 1);
            const p = input.send(c);
            if (p) ops.push([input.kind, p]);
            fatal = input.fatal;
          }
          for (const [kind, p] of ops) {
            const r = await settleWithin(p, WATCHDOG_MS);
            if (r.state === 'hung') hung.push(`server ${k} session ${s}: ${kind}`);
            else if (r.state === 'rejected' && !fatal) unanswered.push(`server ${k} session ${s}: ${kind}: ${String(r.error)}`);
            else if (r.state === 'fulfilled' && isErrorReply(r.value) && !ERRNOS.has(r.value.header.error)) badErrno.push(`${kind}: errno ${r.value.header.error}`);
          }
          if (!fatal) expect(c.unexpected.filter((r) => !isErrorReply(r)), 'replies to posted messages').to.deep.equal([]);
          c.close();
          await server.waitForSessionEnd(WATCHDOG_MS);
        }
      });
    } finally {
      uncaught.stop();
    }
    const seconds = (performance.now() - t0) / 1000;

    // Every server still serves a well-behaved client after all that.
    for (const server of servers) {
      const c = await VfioUserClient.connect(server.socketPath);
      expect(isErrorReply(await c.request(Command.VERSION, version()))).to.equal(false);
      const b = Buffer.alloc(16);
      encodeRegionAccess({ offset: 0, region: PciRegion.CONFIG, count: 4 }, b, 0);
      expect((await c.request(Command.REGION_READ, b)).body.readUInt32LE(16), 'vendor and device id').to.equal(0x00027e57);
      c.close();
      await server.waitForSessionEnd(WATCHDOG_MS);
    }
    const stats = servers.map((s) => s.stats);
    await Promise.all(servers.splice(0).map((s) => s.close()));
    const fdsAfter = openFds();
    const heapGrowth = heapAfterGc() - heapBefore;

    expect(uncaught.errors.map(String), 'uncaught errors').to.deep.equal([]);
    expect(hung, `requests still pending after ${WATCHDOG_MS} ms`).to.deep.equal([]);
    expect(unanswered.slice(0, 5), `${unanswered.length} requests of sessions without a fatal input that got no reply`).to.deep.equal([]);
    expect(badErrno.slice(0, 5), 'error replies with an errno outside the server’s set').to.deep.equal([]);
    expect(fdsAfter, `fds before ${fdsBefore}`).to.equal(fdsBefore);
    expect(heapGrowth, 'heap growth after GC, bytes').to.be.below(16 << 20);
    // Each session may log its connection, its VERSION, at most 50 per-message lines, a summary and its end.
    expect(logLines, 'log lines').to.be.at.most(SERVERS * 2 + (sessions + SERVERS) * 55);
    expect(kinds.size, 'every kind of input was sent').to.equal(12);
    const requests = stats.reduce((n, s) => n + s.requests, 0);
    const errors = stats.reduce((n, s) => n + s.errorReplies, 0);
    this.test!.title += ` [${sent} inputs of ${kinds.size} kinds in ${sessions} sessions on ${SERVERS} servers, ${requests} requests, ${errors} error replies, ${logLines} log lines, ${seconds.toFixed(1)} s, heap ${(heapGrowth / 1e6).toFixed(1)} MB, fds ${fdsBefore}->${fdsAfter}]`;
  });
});
