import { expect } from 'chai';
import { JsonObjectSplitter, type QmpMessage } from '../../harness/qmp/framing.js';
import { QmpProtocolError } from '../../harness/qmp/errors.js';

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
});
