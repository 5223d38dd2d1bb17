import { expect } from 'chai';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient, isErrorReply } from '../../harness/vfio-user/client.js';
import { CapId, Exp, PM_CTRL, PciRegion } from '../../harness/vfio-user/device-model.js';
import { pasidEndpoint } from '../../harness/vfio-user/devices/index.js';
import {
  Command,
  Errno,
  Flags,
  HEADER_SIZE,
  decodeVersion,
  encodeDmaMap,
  encodeHeader,
  encodeRegionAccess,
  encodeRequest,
} from '../../harness/vfio-user/protocol.js';
import { startVfioUserServer, type VfioUserServer } from '../../harness/vfio-user/server.js';

/** QEMU 11.1.3's own VERSION capabilities (tests/fixtures/vfio-user/qemu-11.1.3-realize.hex). */
const QEMU_CAPS =
  '{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}';

function versionPayload(json = QEMU_CAPS): Buffer {
  const j = Buffer.from(json + '\0');
  const b = Buffer.alloc(4 + j.length);
  j.copy(b, 4);
  return b;
}

function regionRead(region: number, offset: number, count: number): Buffer {
  const b = Buffer.alloc(16);
  encodeRegionAccess({ offset, region, count }, b, 0);
  return b;
}

function regionWrite(region: number, offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(16 + data.length);
  encodeRegionAccess({ offset, region, count: data.length }, b, 0);
  data.copy(b, 16);
  return b;
}

function dmaMap(iova: bigint, size = 4096n): Buffer {
  const b = Buffer.alloc(32);
  encodeDmaMap({ argsz: 32, flags: 3, offset: 0n, iova, size }, b, 0);
  return b;
}

function u32s(...v: number[]): Buffer {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => b.writeUInt32LE(x, 4 * i));
  return b;
}

describe('vfio-user server', function () {
  let dir: string;
  let server: VfioUserServer;
  let client: VfioUserClient;
  const logged: string[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-test-'));
    logged.length = 0;
    server = await startVfioUserServer({ socketPath: join(dir, 'dev.sock'), device: pasidEndpoint, log: (l) => logged.push(l) });
    client = await VfioUserClient.connect(server.socketPath);
  });

  afterEach(async () => {
    client.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const handshake = async () => {
    const r = await client.request(Command.VERSION, versionPayload());
    expect(isErrorReply(r)).to.equal(false);
    return r;
  };

  it('answers VERSION with its capabilities JSON and a trailing NUL, and records the client', async () => {
    const r = await handshake();
    expect(r.header.flags).to.equal(Flags.TYPE_REPLY);
    expect(r.body[r.body.length - 1]).to.equal(0);
    const v = decodeVersion(r.body, 0, r.body.length);
    expect(v).to.include({ major: 0, minor: 0 });
    expect(JSON.parse(v.json)).to.deep.equal({ capabilities: { max_msg_fds: 8, max_data_xfer_size: 1048576, pgsizes: 4096, max_dma_maps: 65535 } });
    const seen = await server.waitForHandshake(1000);
    expect(seen).to.deep.include({ major: 0, minor: 0 });
    expect(seen.capabilities).to.have.nested.property('capabilities.max_msg_fds', 16);
    expect(server.stats.versionHandshakes).to.equal(1);
  });

  it('keeps the VERSION reply no larger than the request, as QEMU reads it into the request buffer', async () => {
    const r = await client.request(Command.VERSION, versionPayload('{}'));
    expect(HEADER_SIZE + r.body.length).to.be.at.most(HEADER_SIZE + 4 + 3);
    expect(decodeVersion(r.body, 0, r.body.length).json).to.equal('{}');
    expect(logged.join('\n')).to.match(/would exceed the request/);
  });

  it('refuses every command before VERSION, and a major version other than 0', async () => {
    const early = await client.request(Command.DEVICE_GET_INFO, u32s(16, 0, 0, 0));
    expect(isErrorReply(early)).to.equal(true);
    expect(early.header.error).to.equal(Errno.EINVAL);
    const v1 = Buffer.from(versionPayload());
    v1.writeUInt16LE(1, 0);
    const bad = await client.request(Command.VERSION, v1);
    expect(bad.header).to.include({ flags: Flags.TYPE_REPLY | Flags.ERROR, error: Errno.EINVAL });
    expect(logged.join('\n')).to.match(/before the VERSION handshake/).and.match(/major version 1 is not supported/);
  });

  it('describes the device: info, nine regions, five IRQ indexes', async () => {
    await handshake();
    const info = await client.request(Command.DEVICE_GET_INFO, u32s(16, 0, 0, 0));
    expect([0, 4, 8, 12].map((o) => info.body.readUInt32LE(o))).to.deep.equal([16, 3, 9, 5]);
    const cfg = await client.request(Command.DEVICE_GET_REGION_INFO, Buffer.concat([u32s(32, 0, PciRegion.CONFIG, 0), Buffer.alloc(16)]));
    expect(cfg.body.length).to.equal(32);
    expect(cfg.body.readUInt32LE(4), 'read|write, no mmap').to.equal(3);
    expect(cfg.body.readBigUInt64LE(16)).to.equal(4096n);
    const bar2 = await client.request(Command.DEVICE_GET_REGION_INFO, Buffer.concat([u32s(32, 0, 2, 0), Buffer.alloc(16)]));
    expect(bar2.body.readBigUInt64LE(16)).to.equal(0x100000n);
    const none = await client.request(Command.DEVICE_GET_REGION_INFO, Buffer.concat([u32s(32, 0, 9, 0), Buffer.alloc(16)]));
    expect(none.header.error).to.equal(Errno.EINVAL);
    const small = await client.request(Command.DEVICE_GET_REGION_INFO, Buffer.concat([u32s(16, 0, 7, 0), Buffer.alloc(16)]));
    expect(small.header.error).to.equal(Errno.EINVAL);
    const err = await client.request(Command.DEVICE_GET_IRQ_INFO, u32s(16, 0, 3, 0));
    expect([4, 8, 12].map((o) => err.body.readUInt32LE(o))).to.deep.equal([1, 3, 1]);
    const irqs = await client.request(Command.DEVICE_SET_IRQS, u32s(20, 0x21, 3, 0, 0));
    expect(isErrorReply(irqs)).to.equal(false);
    expect(server.stats.setIrqs).to.equal(1);
  });

  it('reads and writes config space and BARs; a posted write gets no reply', async () => {
    await handshake();
    const r = await client.request(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0, 8));
    expect(r.body.readUInt32LE(12), 'count echoed').to.equal(8);
    expect(r.body.subarray(16).toString('hex')).to.equal('577e020000001100');
    const w = await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, 0x106, Buffer.from([7, 0])));
    expect(w.body.length, 'write reply: offset, region, count').to.equal(16);
    client.post(Command.REGION_WRITE, regionWrite(2, 0x10, Buffer.from('posted')));
    const back = await client.request(Command.REGION_READ, regionRead(2, 0x10, 6));
    expect(back.body.subarray(16).toString()).to.equal('posted');
    const pasidCtl = await client.request(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0x106, 2));
    expect(pasidCtl.body.readUInt16LE(16)).to.equal(7);
    expect(client.unexpected, 'no reply to the posted write').to.deep.equal([]);
    expect(server.stats).to.include({ configReads: 2, configWrites: 1, barReads: 1, barWrites: 1, postedWrites: 1 });
  });

  it('refuses region accesses out of bounds or too large, and answers nothing to a bad posted write', async () => {
    await handshake();
    expect((await client.request(Command.REGION_READ, regionRead(PciRegion.CONFIG, 4094, 4))).header.error).to.equal(Errno.EINVAL);
    expect((await client.request(Command.REGION_READ, regionRead(3, 0, 4))).header.error).to.equal(Errno.EINVAL);
    expect((await client.request(Command.REGION_READ, regionRead(2, 0, 2 << 20))).header.error).to.equal(Errno.E2BIG);
    const short = regionWrite(0, 0, Buffer.alloc(8)).subarray(0, 20);
    expect((await client.request(Command.REGION_WRITE, short)).header.error, 'count beyond the data').to.equal(Errno.EINVAL);
    client.post(Command.REGION_WRITE, regionWrite(5, 0, Buffer.alloc(4)));
    await client.request(Command.DEVICE_GET_INFO, u32s(16, 0, 0, 0));
    expect(client.unexpected).to.deep.equal([]);
    expect(server.stats.unansweredProblems).to.equal(1);
    expect(logged.join('\n')).to.match(/REGION_WRITE \(message \d+\) refused: write of region 5, which this device does not have/);
  });

  it('answers an unknown command and a short payload with an error reply and goes on', async () => {
    await handshake();
    const unknown = await client.request(99, Buffer.alloc(8));
    expect(unknown.header).to.include({ command: 99, flags: Flags.TYPE_REPLY | Flags.ERROR, error: Errno.ENOSYS, size: HEADER_SIZE });
    const short = await client.request(Command.DMA_MAP, Buffer.alloc(8));
    expect(short.header.error).to.equal(Errno.EINVAL);
    const multi = await client.request(Command.REGION_WRITE_MULTI, Buffer.alloc(8));
    expect(multi.header.error, 'write_multiple was not offered').to.equal(Errno.ENOSYS);
    expect(isErrorReply(await client.request(Command.DMA_MAP, dmaMap(0x1000n)))).to.equal(false);
    expect(logged.join('\n')).to.match(/command 99 is not supported/).and.match(/DMA_MAP: payload is 8 bytes, needs 32/);
    expect(server.stats.errorReplies).to.equal(3);
  });

  it('ignores a reply it never asked for, and refuses an unknown message type', async () => {
    await handshake();
    const reply = Buffer.alloc(16);
    encodeHeader({ msgId: 500, command: Command.DMA_READ, size: 16, flags: Flags.TYPE_REPLY, error: 0 }, reply);
    client.sendRaw(reply);
    const odd = Buffer.alloc(16);
    encodeHeader({ msgId: 501, command: Command.DEVICE_RESET, size: 16, flags: 0x7, error: 0 }, odd);
    client.sendRaw(odd);
    await client.request(Command.DEVICE_GET_INFO, u32s(16, 0, 0, 0));
    expect(client.unexpected.map((r) => [r.header.msgId, r.header.error])).to.deep.equal([[501, Errno.EINVAL]]);
    expect(logged.join('\n')).to.match(/unexpected reply 500 \(DMA_READ\) ignored/).and.match(/unknown type 7/);
  });

  it('accepts DMA_MAP and DMA_UNMAP, echoing the unmap entry, and counts them', async () => {
    await handshake();
    const map = await client.request(Command.DMA_MAP, dmaMap(0x200000n, 0x10000n));
    expect(map.body.length, 'no payload in the DMA_MAP reply').to.equal(0);
    const unmapReq = Buffer.alloc(24);
    unmapReq.writeUInt32LE(24, 0);
    unmapReq.writeBigUInt64LE(0x200000n, 8);
    unmapReq.writeBigUInt64LE(0x10000n, 16);
    const unmap = await client.request(Command.DMA_UNMAP, unmapReq);
    expect(unmap.body.equals(unmapReq)).to.equal(true);
    unmapReq.writeUInt32LE(1, 4);
    expect((await client.request(Command.DMA_UNMAP, unmapReq)).header.error, 'dirty bitmap not negotiated').to.equal(Errno.EINVAL);
    expect(server.stats).to.include({ dmaMaps: 1, dmaMapBytes: 0x10000, dmaUnmaps: 1 });
  });

  it('restores the device on DEVICE_RESET', async () => {
    await handshake();
    await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, 0x4, Buffer.from([6, 0])));
    expect(server.device.config.readUInt16LE(4)).to.equal(6);
    const r = await client.request(Command.DEVICE_RESET);
    expect(isErrorReply(r)).to.equal(false);
    expect(server.device.config.readUInt16LE(4)).to.equal(0);
    expect(server.stats.resets).to.equal(1);
  });

  it('resets the function on a config write of Initiate FLR and on D3hot→D0, and counts both apart from DEVICE_RESET', async () => {
    await handshake();
    const exp = server.device.findCapability(CapId.EXP)!.offset;
    const pm = server.device.findCapability(CapId.PM)!.offset;
    await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, 0x4, Buffer.from([6, 0])));
    await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, exp + Exp.DEVCTL, Buffer.from([0x10, 0xa8])));
    expect(server.device.config.readUInt16LE(4), 'command after FLR').to.equal(0);
    await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, 0x4, Buffer.from([6, 0])));
    await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, pm + PM_CTRL, Buffer.from([3, 0])));
    expect(server.device.config.readUInt16LE(4), 'command in D3hot').to.equal(6);
    await client.request(Command.REGION_WRITE, regionWrite(PciRegion.CONFIG, pm + PM_CTRL, Buffer.from([0, 0])));
    expect(server.device.config.readUInt16LE(4), 'command after D3hot→D0').to.equal(0);
    expect(server.stats).to.include({ functionResets: 2, resets: 0 });
    expect(server.device.resets).to.deep.equal({ device: 0, flr: 1, pm: 1 });
    expect(server.recentLog().filter((l) => l.includes('function reset')).map((l) => l.replace(/^.*?: /, ''))).to.deep.equal(['function reset by FLR (#1)', 'function reset by D3hot→D0 (#2)']);
  });

  it('answers an unframeable header with an error, closes the session and takes the next client', async () => {
    await handshake();
    const bad = Buffer.alloc(16);
    encodeHeader({ msgId: 77, command: Command.DMA_MAP, size: 4, flags: 0, error: 0 }, bad);
    client.sendRaw(bad);
    await client.waitClosed(2000);
    expect(client.unexpected.map((r) => [r.header.msgId, r.header.error])).to.deep.equal([[77, Errno.EINVAL]]);
    const end = await server.waitForSessionEnd(2000);
    expect(end.reason).to.equal('unframeable');
    client = await VfioUserClient.connect(server.socketPath);
    await handshake();
    expect(server.stats.connections).to.equal(2);
  });

  // Before: the server went on discarding what it was sent, so a header
  // claiming 0xFFFFFFFF bytes left a session that was open and answered nothing.
  for (const size of [HEADER_SIZE + 16 + (1 << 20) + 64, 0xffffffff]) {
    it(`answers a message of ${size} bytes (over the limit) with E2BIG and ends the session`, async () => {
      await handshake();
      const big = Buffer.alloc(Math.min(size, 64 << 10));
      encodeHeader({ msgId: 88, command: Command.REGION_WRITE, size, flags: 0, error: 0 }, big);
      client.sendRaw(big);
      const end = await server.waitForSessionEnd(2000);
      expect(end.reason).to.equal('oversized');
      expect(end.detail).to.equal(`message 88 declared size ${size}, limit ${HEADER_SIZE + 16 + (1 << 20)}`);
      await client.waitClosed(2000);
      expect(client.unexpected.map((r) => [r.header.msgId, r.header.error])).to.deep.equal([[88, Errno.E2BIG]]);
      expect(String(await client.request(Command.DEVICE_GET_INFO, u32s(16, 0, 0, 0)).catch((e: unknown) => e))).to.include('closed connection');
      client = await VfioUserClient.connect(server.socketPath);
      await handshake();
    });
  }

  it('ends the session cleanly when the peer vanishes mid-message, and refuses a second client meanwhile', async () => {
    await handshake();
    const second = await VfioUserClient.connect(server.socketPath);
    await second.waitClosed(2000);
    expect(server.stats.refusedConnections).to.equal(1);
    client.sendRaw(Buffer.from([1, 0, 2, 0, 48, 0])); // half a header
    client.close();
    const end = await server.waitForSessionEnd(2000);
    expect(end).to.deep.include({ reason: 'peer-closed' });
    expect(server.sessionActive).to.equal(false);
  });

  it('refuses to listen on an existing path and removes its socket on close', async () => {
    const taken = join(dir, 'taken');
    writeFileSync(taken, '');
    let error: Error | undefined;
    await startVfioUserServer({ socketPath: taken, device: pasidEndpoint }).catch((e: Error) => (error = e));
    expect(error?.message).to.match(/socket path .*taken already exists/);
    expect(existsSync(taken), 'a non-socket file is left alone').to.equal(true);
    client.close();
    await server.close();
    expect(existsSync(server.socketPath)).to.equal(false);
  });

  it('survives random well-framed messages: every request without No_reply is answered, then QEMU-like use goes on', async () => {
    await handshake();
    let seed = 0x6d2b79f5;
    const rand = (n: number): number => {
      // mulberry32: a fixed seed, so a failure can be replayed.
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    const answered: Array<Promise<unknown>> = [];
    for (let i = 0; i < 2000; i++) {
      const command = rand(20);
      const payload = Buffer.from(Array.from({ length: rand(48) }, () => rand(256)));
      if (command === Command.DEVICE_RESET || command === Command.VERSION) continue; // valid either way; keep the device and session as they are
      if (rand(4) === 0) client.post(command, payload);
      else answered.push(client.request(command, payload));
    }
    await Promise.all(answered);
    expect(client.closed).to.equal(false);
    const r = await client.request(Command.REGION_READ, regionRead(PciRegion.CONFIG, 0, 4));
    expect(r.body.readUInt32LE(16)).to.equal(0x00027e57);
    expect(client.unexpected, 'nothing answered that asked for no reply').to.deep.equal([]);
  });

  it('answers 100,000 pipelined DMA_MAPs, each once', async function () {
    this.timeout(30_000);
    await handshake();
    // Two rounds: message ids are 16 bits, so at most 65535 can be in flight.
    const round = 50_000;
    const n = 2 * round;
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < 2; k++) {
      const replies = Array.from({ length: round }, (_, i) => client.request(Command.DMA_MAP, dmaMap(BigInt(k * round + i) << 12n), 20_000));
      const all = await Promise.all(replies);
      expect(all.every((r) => !isErrorReply(r))).to.equal(true);
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    expect(server.stats.dmaMaps).to.equal(n);
    expect(client.unexpected).to.deep.equal([]);
    this.test!.title += ` (${Math.round(n / seconds)}/s with the client in this process)`;
  });

  it('refuses a DMA_MAP of 2^64 - 64 KiB with EINVAL, naming the range, and goes on', async () => {
    await handshake();
    const b = Buffer.alloc(32);
    encodeDmaMap({ argsz: 32, flags: 3, offset: 0n, iova: 0n, size: 2n ** 64n - 0x1_0000n }, b, 0);
    const r = await client.request(Command.DMA_MAP, b);
    expect([isErrorReply(r), r.header.error]).to.deep.equal([true, Errno.EINVAL]);
    expect(logged.some((l) => l.includes('DMA_MAP (message 2) refused: DMA_MAP: range 0x0+0xffffffffffff0000 ends beyond 2^57'))).to.equal(true);
    expect(server.stats.dmaMaps).to.equal(0);
    expect(isErrorReply(await client.request(Command.DMA_MAP, dmaMap(0x10_0000n)))).to.equal(false);
  });

  // Before: 100,000 unknown commands printed 100,000 lines.
  it('logs the first per-message refusals of a session, then counts them, and says so at the end', async function () {
    this.timeout(20_000);
    await handshake();
    const n = 20_000;
    const replies = Array.from({ length: n }, () => client.request(99, undefined, 20_000));
    expect((await Promise.all(replies)).every((r) => r.header.error === Errno.ENOSYS)).to.equal(true);
    const refusals = logged.filter((l) => l.includes('command 99'));
    expect(refusals).to.have.length(50);
    expect(refusals[49]).to.include('further per-message lines of this session are counted, not logged');
    expect(server.stats.suppressedLogLines).to.equal(n - 50);
    expect(server.recentLog().at(-1), 'the newest lines stay in recentLog').to.include(`message ${n + 1}`);
    client.close();
    await server.waitForSessionEnd(2000);
    expect(logged.at(-2)).to.include(`${n - 50} more per-message log lines of this session were not logged`);
  });

  // Before: replies piled up in the server's socket buffer without bound (2,000
  // unread 1 MiB REGION_READs: +2 GB RSS).
  it('stops reading a client that does not read its replies, and serves it all once it does', async function () {
    this.timeout(30_000);
    const n = 400;
    client.close(); // a raw socket plays the client
    await server.waitForSessionEnd(2000);
    const raw = connect(server.socketPath);
    await new Promise((r) => raw.once('connect', r));
    raw.pause();
    raw.write(encodeRequest(1, Command.VERSION, versionPayload()));
    const req = encodeRequest(2, Command.REGION_READ, regionRead(2, 0, 1 << 20));
    for (let i = 0; i < n; i++) raw.write(req);
    await new Promise((r) => setTimeout(r, 500));
    const handled = server.stats.requests;
    expect(server.stats.backpressurePauses).to.be.at.least(1);
    // 4 MiB of replies may queue, plus what the kernel's socket buffers hold.
    expect(handled, 'requests handled while the client read nothing').to.be.below(20);
    let got = 0;
    raw.on('data', (d: Buffer) => (got += d.length));
    raw.resume();
    const want = (HEADER_SIZE + 16 + (1 << 20)) * n;
    for (let i = 0; i < 200 && got < want + 100; i++) await new Promise((r) => setTimeout(r, 50));
    expect(server.stats.requests).to.equal(n + 1);
    expect(got).to.be.at.least(want);
    raw.destroy();
    this.test!.title += ` (${handled} of ${n} 1 MiB reads handled while unread)`;
  });

  // Before: the socket was made with the process umask (0755 here, 0777 under umask 0).
  it('creates its socket 0600 whatever the umask, and only in a private directory', async () => {
    expect(statSync(server.socketPath).mode & 0o777).to.equal(0o600);
    const old = process.umask(0);
    try {
      const s2 = await startVfioUserServer({ socketPath: join(dir, 'other.sock'), device: pasidEndpoint });
      expect(statSync(s2.socketPath).mode & 0o777).to.equal(0o600);
      await s2.close();
    } finally {
      process.umask(old);
    }
    const open = join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o755);
    const err = await startVfioUserServer({ socketPath: join(open, 'x.sock'), device: pasidEndpoint }).catch((e: Error) => e);
    expect(String(err)).to.include(`socket directory ${open} has mode 0755; it must be private (0700`);
    expect(existsSync(join(open, 'x.sock'))).to.equal(false);
  });
});

