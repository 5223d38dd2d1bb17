import { expect } from 'chai';
import { JsonObjectSplitter, type QmpMessage } from '../../harness/qmp/framing.js';
import { QmpMessageTooLargeError, QmpProtocolError } from '../../harness/qmp/errors.js';

// Real lines from QEMU 11.1.3 (artifacts qmp.jsonl of a q35 -S machine).
const greeting =
  '{"QMP": {"version": {"qemu": {"micro": 3, "minor": 1, "major": 11}, "package": "Debian 1:11.1.3+ds-1"}, "capabilities": ["oob"]}}\r\n';
const reply = '{"return": {"status": "prelaunch", "running": false}, "id": "h2"}\r\n';
const event = '{"timestamp": {"seconds": 1764121200, "microseconds": 12345}, "event": "STOP"}\r\n';

function split(chunks: Array<string | Buffer>): QmpMessage[] {
  const out: QmpMessage[] = [];
  const s = new JsonObjectSplitter((m) => out.push(m));
  for (const c of chunks) s.push(typeof c === 'string' ? Buffer.from(c) : c);
  return out;
}

describe('QMP framing', () => {
  it('splits several messages in one read', () => {
    const msgs = split([greeting + reply + event]);
    expect(msgs.map((m) => Object.keys(m)[0])).to.deep.equal(['QMP', 'return', 'timestamp']);
  });

  it('joins a message split at every byte', () => {
    const all = Buffer.from(greeting + reply);
    const msgs = split([...all].map((b) => Buffer.from([b])));
    expect(msgs).to.have.length(2);
    expect(msgs[1]).to.deep.equal({ return: { status: 'prelaunch', running: false }, id: 'h2' });
  });

  it('keeps braces and escaped quotes inside strings', () => {
    const tricky = '{"return": "a } \\" { b", "id": "h1"}\n';
    expect(split([tricky])[0]).to.deep.equal({ return: 'a } " { b', id: 'h1' });
  });

  it('reads pretty-printed (multi-line) messages', () => {
    const pretty = '{\n    "return": {\n        "running": true\n    },\n    "id": "h3"\n}\n';
    expect(split([pretty])[0]).to.deep.equal({ return: { running: true }, id: 'h3' });
  });

  it('decodes a multi-byte character split across reads', () => {
    const b = Buffer.from('{"return": "Größe ✓", "id": "h4"}\n');
    const cut = b.indexOf(0x9c); // inside the 3-byte check mark
    expect(split([b.subarray(0, cut), b.subarray(cut)])[0]).to.deep.equal({ return: 'Größe ✓', id: 'h4' });
  });

  it('names malformed JSON from the peer', () => {
    expect(() => split(['{"return": nope}\n'])).to.throw(QmpProtocolError, /malformed JSON.*nope/);
  });

  it('rejects bytes that are not a JSON object', () => {
    expect(() => split(['HTTP/1.1 400 Bad Request\r\n'])).to.throw(QmpProtocolError, /unexpected byte 0x48/);
    expect(() => split(['}'])).to.throw(QmpProtocolError, /unbalanced/);
  });

  /** Feeds `msg` in 64 KiB reads and counts the bytes Buffer.concat copies meanwhile. */
  function copiedWhileSplitting(msg: Buffer, max?: number): { copied: number; out: QmpMessage[] } {
    const out: QmpMessage[] = [];
    const s = new JsonObjectSplitter((m) => out.push(m), max);
    const concat = Buffer.concat;
    let copied = 0;
    Buffer.concat = ((list: readonly Uint8Array[], len?: number) => {
      const b = concat(list, len);
      copied += b.length;
      return b;
    }) as typeof Buffer.concat;
    try {
      for (let i = 0; i < msg.length; i += 65536) s.push(msg.subarray(i, i + 65536));
    } finally {
      Buffer.concat = concat;
    }
    return { copied, out };
  }

  // Before: every read was concatenated to all the bytes before it, so 16 MiB
  // in 64 KiB reads copied about 2 GiB (40 MB took 5.9 s, 80 MB 22 s).
  it('copies a message split over many reads once: framing is linear in its size', () => {
    const msg = Buffer.from(`{"return": "${'a\\n'.repeat((16 << 20) / 3)}", "id": "h1"}\n`);
    const t = performance.now();
    const { copied, out } = copiedWhileSplitting(msg, 64 << 20);
    const ms = performance.now() - t;
    expect(out).to.have.length(1);
    expect(copied, 'bytes copied by Buffer.concat').to.be.at.most(msg.length);
    expect(ms, 'a 16 MiB message, escapes all along').to.be.below(3000);
  });

  it('refuses a message past maxMessageBytes with its size, before its end arrives', () => {
    const s = new JsonObjectSplitter(() => {}, 1000);
    s.push(Buffer.from(`{"return": "${'x'.repeat(900)}`));
    expect(s.buffered).to.be.at.most(1000);
    let err: unknown;
    try {
      s.push(Buffer.from('x'.repeat(200)));
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(QmpMessageTooLargeError).and.include({ size: 1112, limit: 1000, incomplete: true });
    // A whole message over the limit in one read: its exact size.
    const whole = new JsonObjectSplitter(() => {}, 10);
    expect(() => whole.push(Buffer.from('{"return": 12345}'))).to.throw(QmpMessageTooLargeError, 'QMP message of 17 bytes exceeds the limit of 10 bytes');
  });

  it('keeps nothing of the messages it has handed out', () => {
    const s = new JsonObjectSplitter(() => {});
    for (let i = 0; i < 1000; i++) s.push(Buffer.from(reply + event));
    s.push(Buffer.from('{"return": {"half'));
    expect(s.buffered).to.equal('{"return": {"half'.length);
  });

  // Before: a reply nested 40,000 deep parsed, and the first JSON.stringify
  // of it (in an error message) threw a RangeError that no caller expected.
  it('refuses nesting deeper than QEMU accepts (1024), arrays and objects alike', () => {
    expect(split([`{"return": ${'['.repeat(1023)}${']'.repeat(1023)}, "id": "h1"}`])).to.have.length(1);
    expect(() => split([`{"return": ${'['.repeat(1024)}${']'.repeat(1024)}}`])).to.throw(QmpProtocolError, 'nests objects and arrays deeper than 1024 levels');
    expect(() => split(['{"a":'.repeat(2000)])).to.throw(QmpProtocolError, 'deeper than 1024');
    expect(split([`{"return": "${'['.repeat(5000)}", "id": "h1"}`]), 'brackets inside strings do not count').to.have.length(1);
  });
});

