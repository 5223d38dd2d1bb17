import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';
import {
  Command,
  DEFAULT_CAPABILITIES,
  Flags,
  FrameReader,
  HEADER_SIZE,
  PayloadError,
  capabilitiesJson,
  commandName,
  checkDmaMap,
  checkDmaUnmap,
  decodeDmaMap,
  decodeDmaUnmap,
  DmaUnmapFlags,
  type DmaMap,
  type DmaUnmap,
  decodeHeader,
  decodeRegionAccess,
  decodeVersion,
  encodeErrorReply,
  encodeHeader,
  encodeRequest,
  encodeVersionReply,
  type Frame,
  type FrameProblem,
} from '../../harness/vfio-user/protocol.js';

interface Seen {
  msgId: number;
  command: number;
  size: number;
  flags: number;
  body: string;
}

function collect(maxMessageSize = 1 << 20) {
  const frames: Seen[] = [];
  const problems: FrameProblem[] = [];
  const reader = new FrameReader(
    {
      frame: (f: Frame) =>
        frames.push({ msgId: f.msgId, command: f.command, size: f.size, flags: f.flags, body: f.buf.toString('hex', f.bodyStart, f.bodyStart + f.size - HEADER_SIZE) }),
      problem: (p) => problems.push(p),
    },
    maxMessageSize,
    32,
  );
  return { reader, frames, problems };
}

/** Messages QEMU 11.1.3 sent to the server when vfio-user-pci was realized (captured, see the fixture's README). */
function capturedSession(): Array<{ dir: 'c2s' | 's2c'; bytes: Buffer }> {
  const text = readFileSync(join(repoRoot, 'tests/fixtures/vfio-user/qemu-11.1.3-realize.hex'), 'utf8');
  return text
    .split('\n')
    .filter((l) => /^(c2s|s2c) /.test(l))
    .map((l) => ({ dir: l.slice(0, 3) as 'c2s' | 's2c', bytes: Buffer.from(l.slice(4).trim(), 'hex') }));
}

describe('vfio-user protocol', () => {
  it('encodes and decodes the 16-byte header little-endian', () => {
    const b = Buffer.alloc(HEADER_SIZE);
    encodeHeader({ msgId: 0xbeef, command: Command.REGION_WRITE, size: 0x12345678, flags: Flags.NO_REPLY, error: 0 }, b);
    expect(b.toString('hex')).to.equal('efbe0a0078563412' + '10000000' + '00000000');
    expect(decodeHeader(b)).to.deep.equal({ msgId: 0xbeef, command: 10, size: 0x12345678, flags: 0x10, error: 0 });
    expect(() => decodeHeader(b.subarray(0, 15))).to.throw(/needs 16 bytes, got 15/);
  });

  it('names commands, including unknown numbers', () => {
    expect(commandName(2)).to.equal('DMA_MAP');
    expect(commandName(13)).to.equal('DEVICE_RESET');
    expect(commandName(99)).to.equal('command 99');
  });

  it('builds an error reply of the header alone, with the Error bit and errno', () => {
    const r = encodeErrorReply(7, Command.DMA_MAP, 22);
    expect(r.length).to.equal(HEADER_SIZE);
    expect(decodeHeader(r)).to.deep.equal({ msgId: 7, command: 2, size: 16, flags: Flags.TYPE_REPLY | Flags.ERROR, error: 22 });
  });

  it('frames the captured QEMU session whole, split byte by byte, and in odd chunks alike', () => {
    const msgs = capturedSession().filter((m) => m.dir === 'c2s');
    expect(msgs.length).to.be.greaterThan(20);
    const stream = Buffer.concat(msgs.map((m) => m.bytes));
    const whole = collect();
    whole.reader.push(stream);
    expect(whole.frames.length).to.equal(msgs.length);
    expect(whole.reader.buffered).to.equal(0);
    for (const split of [1, 3, 7, 16, 17, 100]) {
      const c = collect();
      for (let i = 0; i < stream.length; i += split) c.reader.push(stream.subarray(i, i + split));
      expect(c.frames, `chunks of ${split}`).to.deep.equal(whole.frames);
      expect(c.problems).to.deep.equal([]);
    }
    // QEMU's first message is VERSION with its capabilities JSON, NUL-terminated.
    const first = whole.frames[0]!;
    expect(first.command).to.equal(Command.VERSION);
    const v = decodeVersion(Buffer.from(first.body, 'hex'), 0, first.size - HEADER_SIZE);
    expect(v.major).to.equal(0);
    expect(JSON.parse(v.json)).to.have.nested.property('capabilities.max_msg_fds', 16);
    expect(whole.frames.filter((f) => f.command === Command.DMA_MAP).length).to.be.greaterThan(0);
  });

  it('copies pending bytes linearly: the buffer holds at most one partial message', () => {
    const c = collect();
    const one = encodeRequest(1, Command.DMA_MAP, Buffer.alloc(32, 0xab));
    const many = Buffer.concat(Array.from({ length: 5000 }, () => one));
    let maxBuffered = 0;
    for (let i = 0; i < many.length; i += 37) {
      c.reader.push(many.subarray(i, i + 37));
      maxBuffered = Math.max(maxBuffered, c.reader.buffered);
    }
    expect(c.frames.length).to.equal(5000);
    expect(maxBuffered).to.be.lessThan(one.length);
  });

  it('reports a size below the header as unframeable and stops', () => {
    const c = collect();
    const bad = Buffer.alloc(HEADER_SIZE);
    encodeHeader({ msgId: 3, command: Command.DMA_MAP, size: 8, flags: 0, error: 0 }, bad);
    c.reader.push(Buffer.concat([encodeRequest(1, Command.DEVICE_RESET, undefined), bad, encodeRequest(1, Command.DEVICE_RESET, undefined)]));
    expect(c.frames.map((f) => f.command)).to.deep.equal([Command.DEVICE_RESET]);
    expect(c.problems).to.have.length(1);
    expect(c.problems[0]).to.include({ kind: 'bad-size' });
    expect(c.problems[0]!.header).to.include({ msgId: 3, size: 8 });
    expect(c.reader.isBroken).to.equal(true);
    c.reader.push(encodeRequest(1, Command.DEVICE_RESET, undefined));
    expect(c.frames).to.have.length(1);
  });

  it('discards an oversized message as it arrives and frames the next one', () => {
    const c = collect(64);
    const big = encodeRequest(1, Command.REGION_WRITE, Buffer.alloc(200, 1));
    const next = encodeRequest(1, Command.DEVICE_RESET, undefined);
    const stream = Buffer.concat([big, next]);
    for (let i = 0; i < stream.length; i += 50) c.reader.push(stream.subarray(i, i + 50));
    expect(c.problems).to.have.length(1);
    expect(c.problems[0]).to.deep.include({ kind: 'oversized', limit: 64 });
    expect(c.frames.map((f) => f.command)).to.deep.equal([Command.DEVICE_RESET]);
  });

  it('decodes VERSION and insists on the trailing NUL', () => {
    const good = Buffer.from('0000' + '0000' + Buffer.from('{"a":1}\0').toString('hex'), 'hex');
    expect(decodeVersion(good, 0, good.length)).to.deep.equal({ major: 0, minor: 0, json: '{"a":1}' });
    const noNul = Buffer.from('00000000' + Buffer.from('{}').toString('hex'), 'hex');
    expect(() => decodeVersion(noNul, 0, noNul.length)).to.throw(PayloadError, /lacks its terminating NUL/);
    const inner = Buffer.from('00000000' + Buffer.from('{}\0x\0').toString('hex'), 'hex');
    expect(() => decodeVersion(inner, 0, inner.length)).to.throw(/NUL at byte 2/);
    expect(() => decodeVersion(good, 0, 3)).to.throw(/needs at least 4/);
    expect(decodeVersion(good, 0, 4).json).to.equal('');
  });

  it('encodes the VERSION reply with capabilities JSON and a trailing NUL', () => {
    const r = encodeVersionReply(9, { major: 0, minor: 0, json: capabilitiesJson(DEFAULT_CAPABILITIES) });
    const h = decodeHeader(r);
    expect(h).to.include({ msgId: 9, command: Command.VERSION, flags: Flags.TYPE_REPLY, size: r.length });
    expect(r[r.length - 1]).to.equal(0);
    const v = decodeVersion(r, HEADER_SIZE, r.length - HEADER_SIZE);
    expect(JSON.parse(v.json)).to.deep.equal({ capabilities: { max_msg_fds: 8, max_data_xfer_size: 1048576, pgsizes: 4096, max_dma_maps: 65535 } });
  });

  it('decodes a captured DMA_MAP and region accesses', () => {
    const map = capturedSession().find((m) => m.dir === 'c2s' && m.bytes.readUInt16LE(2) === Command.DMA_MAP)!.bytes;
    const m = decodeDmaMap(map, HEADER_SIZE, map.length - HEADER_SIZE);
    expect(m.argsz).to.equal(32);
    expect(m.flags & 1).to.equal(1);
    expect(m.size > 0n).to.equal(true);
    expect(() => decodeDmaMap(map, HEADER_SIZE, 31)).to.throw(/DMA_MAP: payload is 31 bytes, needs 32/);
    const rw = Buffer.alloc(16);
    rw.writeBigUInt64LE(0x1_0000_0010n, 0);
    rw.writeUInt32LE(7, 8);
    rw.writeUInt32LE(4, 12);
    expect(decodeRegionAccess(rw, 0, 16, 'REGION_READ')).to.deep.equal({ offset: 0x1_0000_0010, region: 7, count: 4 });
    rw.writeBigUInt64LE(1n << 60n, 0);
    expect(decodeRegionAccess(rw, 0, 16, 'REGION_READ').offset).to.equal(Infinity);
  });

  it('passes every DMA_MAP and DMA_UNMAP QEMU 11.1.3 sent in the captured realize', () => {
    const msgs = capturedSession().filter((m) => m.dir === 'c2s');
    const maps = msgs.filter((m) => m.bytes.readUInt16LE(2) === Command.DMA_MAP);
    expect(maps.length).to.be.above(0);
    for (const { bytes } of maps) checkDmaMap(decodeDmaMap(bytes, HEADER_SIZE, bytes.length - HEADER_SIZE), bytes.length - HEADER_SIZE, 4096);
    for (const { bytes } of msgs.filter((m) => m.bytes.readUInt16LE(2) === Command.DMA_UNMAP)) checkDmaUnmap(decodeDmaUnmap(bytes, HEADER_SIZE, bytes.length - HEADER_SIZE));
  });

  // Before: any DMA_MAP with 32 bytes was accepted, a size of 2^64 - 64 KiB included.
  const map = (o: Partial<DmaMap>): DmaMap => ({ argsz: 32, flags: 3, offset: 0n, iova: 0x10_0000n, size: 0x1000n, ...o });
  for (const [what, m, why] of [
    ['a size of 2^64 - 64 KiB', map({ iova: 0n, size: 2n ** 64n - 0x1_0000n }), 'ends beyond 2^57'],
    ['a range wrapping past 2^64', map({ iova: 2n ** 64n - 0x1000n, size: 0x2000n }), 'wraps past 2^64'],
    ['a range ending past 2^57', map({ iova: 2n ** 57n - 0x1000n, size: 0x2000n }), 'ends beyond 2^57'],
    ['a size of 0', map({ size: 0n }), 'size is 0'],
    ['an unaligned address', map({ iova: 0x10_0800n }), 'address 0x100800 is not aligned to the page size 4096'],
    ['an unaligned size', map({ size: 0x1800n }), 'size 0x1800 is not a multiple of the page size 4096'],
    ['unknown flags', map({ flags: 0x13 }), 'unknown bits 0x10'],
    ['a short argsz', map({ argsz: 16 }), 'argsz 16 is outside 32..32'],
  ] as const) {
    it(`refuses a DMA_MAP with ${what}, naming why`, () => {
      expect(() => checkDmaMap(m, 32, 4096)).to.throw(PayloadError, why);
    });
  }

  it('accepts DMA_MAPs QEMU can send: pages, 2 MiB leaves, the top of a 48-bit space', () => {
    for (const m of [map({}), map({ iova: 0x4000_0000n, size: 0x20_0000n, flags: 1 }), map({ iova: 2n ** 48n - 0x1000n, offset: 0x1234_5000n })]) checkDmaMap(m, 32, 4096);
  });

  it('refuses a DMA_UNMAP with ALL and a range, unknown flags, or a wrap', () => {
    const u = (o: Partial<DmaUnmap>): DmaUnmap => ({ argsz: 24, flags: 0, iova: 0x1000n, size: 0x1000n, ...o });
    expect(() => checkDmaUnmap(u({ flags: DmaUnmapFlags.ALL }))).to.throw(PayloadError, 'ALL needs address and size 0');
    expect(() => checkDmaUnmap(u({ flags: 8 }))).to.throw(PayloadError, 'unknown bits 0x8');
    expect(() => checkDmaUnmap(u({ iova: 2n ** 64n - 0x1000n, size: 0x2000n }))).to.throw(PayloadError, 'wraps past 2^64');
    // QEMU unmaps a full 64-bit IOMMU region as two halves: the upper one ends at 2^64 exactly.
    checkDmaUnmap(u({ iova: 2n ** 63n, size: 2n ** 63n }));
    checkDmaUnmap(u({ flags: DmaUnmapFlags.ALL, iova: 0n, size: 0n }));
  });

  it('pauses after the message being handed out and frames the rest on resume', () => {
    const msgs = capturedSession().filter((m) => m.dir === 'c2s').slice(0, 6);
    const all = Buffer.concat(msgs.map((m) => m.bytes));
    const out: number[] = [];
    const reader = new FrameReader({ frame: (f) => (out.push(f.msgId), reader.pause()), problem: () => {} }, 1 << 20, 32);
    reader.push(all.subarray(0, 40));
    reader.push(all.subarray(40));
    const ids = msgs.map((m) => m.bytes.readUInt16LE(0));
    expect(out).to.deep.equal(ids.slice(0, 1));
    for (let i = 2; i <= ids.length; i++) {
      reader.resume();
      expect(out).to.deep.equal(ids.slice(0, i));
    }
    expect(reader.buffered).to.equal(0);
  });
});

