import { expect } from 'chai';
import { formatPing, formatRun, guestTimeoutSeconds, LineSplitter, parseAgentLine } from '../../harness/guest/agent-protocol.js';
import { fuzzSeed, Rng } from '../support/fuzz.js';

const b64 = (s: string): string => Buffer.from(s).toString('base64');

describe('guest agent protocol', () => {
  it('formats a RUN with the command and stdin base64, timeout in whole seconds', () => {
    expect(formatRun(7, 2500, 'echo "a b"')).to.equal(`RUN 7 3 ${b64('echo "a b"')}\n`);
    expect(formatRun(8, 100, 'cat', 'x\ny')).to.equal(`RUN 8 1 ${b64('cat')} ${b64('x\ny')}\n`);
    expect(formatRun(9, 1000, 'true', '')).to.equal(`RUN 9 1 ${b64('true')}\n`);
    expect(formatPing(3)).to.equal('PING 3\n');
    expect(guestTimeoutSeconds(1)).to.equal(1);
    expect(guestTimeoutSeconds(1001)).to.equal(2);
  });

  it('refuses a request it cannot express', () => {
    expect(() => formatRun(-1, 1000, 'x')).to.throw(RangeError, /id/);
    expect(() => formatRun(1, 0, 'x')).to.throw(RangeError, /timeoutMs/);
  });

  it('parses a RES with binary-safe output', () => {
    const out = Buffer.from([0, 1, 0xff, 0x0a, 0x20]);
    const m = parseAgentLine(`RES 12 3 0 154 ${out.toString('base64')} ${b64('oops\n')}`);
    expect(m).to.deep.include({ kind: 'result', id: 12, status: 3, timedOut: false, guestMs: 1540 });
    if (m.kind !== 'result') throw new Error('not a result');
    expect(m.stdout.equals(out)).to.equal(true);
    expect(m.stderr.toString()).to.equal('oops\n');
  });

  it('parses empty output fields and the timed-out flag', () => {
    const m = parseAgentLine('RES 4 137 1 200  ');
    expect(m).to.deep.include({ kind: 'result', id: 4, status: 137, timedOut: true });
  });

  // Real lines seen from the guest (busybox 1.35, Linux 7.2.13).
  it('parses HELLO, PONG and ERR as the guest sends them', () => {
    expect(parseAgentLine('HELLO 1 7.2.13')).to.deep.equal({ kind: 'hello', protocol: 1, kernelRelease: '7.2.13' });
    expect(parseAgentLine('PONG 1 3.21')).to.deep.equal({ kind: 'pong', id: 1, uptimeS: 3.21 });
    expect(parseAgentLine(`ERR 5 ${b64('bad timeout x')}`)).to.deep.equal({ kind: 'error', id: 5, message: 'bad timeout x' });
  });

  it('keeps malformed lines as garbage with the reason', () => {
    expect(parseAgentLine('RES 1 0 0 5 !!! ')).to.deep.include({ kind: 'garbage', why: 'RES stdout is not base64 ("!!!")' });
    expect(parseAgentLine('RES 1 0 0 5 aGk=')).to.deep.include({ kind: 'garbage', why: 'RES has 6 fields, expected 7' });
    expect(parseAgentLine('RES x 0 0 5  ')).to.deep.include({ kind: 'garbage' });
    expect(parseAgentLine('RES 1 256 0 5  ')).to.deep.include({ kind: 'garbage' });
    expect(parseAgentLine('[    1.234] random kernel line')).to.deep.include({ kind: 'garbage', why: 'unknown message type' });
    expect(parseAgentLine('PONG 1')).to.deep.include({ kind: 'garbage' });
  });

  it('tolerates a carriage return at the end of a line', () => {
    expect(parseAgentLine('PONG 2 1.00\r')).to.deep.equal({ kind: 'pong', id: 2, uptimeS: 1 });
  });

  it('splits lines across chunk boundaries', () => {
    const s = new LineSplitter();
    expect(s.push('PONG 1 1.0')).to.deep.equal([]);
    expect(s.push('0\nRES 2')).to.deep.equal(['PONG 1 1.00']);
    expect(s.pending).to.equal('RES 2');
    expect(s.push(' 0 0 1  \nHE')).to.deep.equal(['RES 2 0 0 1  ']);
  });

  // Before: every chunk was appended to the unfinished line and the whole
  // split again, so a long line cost the square of its length, without limit.
  it('joins a long line from many chunks in linear time', () => {
    const s = new LineSplitter();
    const chunk = 'A'.repeat(4096);
    const t = performance.now();
    for (let i = 0; i < 2048; i++) expect(s.push(chunk)).to.deep.equal([]);
    const [line] = s.push('\n');
    expect(line).to.have.length(8 << 20);
    expect(performance.now() - t, 'an 8 MiB line in 4 KiB chunks, ms').to.be.below(1500);
  });

  it('drops a line over the limit up to its newline and reports it as garbage with its length', () => {
    const s = new LineSplitter(1000);
    expect(s.push('RES 1 0 0 5 ' + 'A'.repeat(600))).to.deep.equal([]);
    expect(s.push('B'.repeat(600))).to.deep.equal([]);
    expect(s.pending, 'nothing of the over-long line is kept').to.equal('');
    const out = s.push('C'.repeat(10) + '\nPONG 1 2.5\n' + 'D'.repeat(1001) + '\nHE');
    expect(out).to.have.length(3);
    expect(parseAgentLine(out[0]!)).to.deep.include({ kind: 'garbage', why: `a line of 1222 characters exceeds the limit of 1000 and was dropped; it began "RES 1 0 0 5 ${'A'.repeat(68)}"` });
    expect(parseAgentLine(out[1]!)).to.deep.equal({ kind: 'pong', id: 1, uptimeS: 2.5 });
    expect(parseAgentLine(out[2]!)).to.deep.include({ kind: 'garbage' });
    expect(s.dropped).to.equal(2);
    expect(s.pending).to.equal('HE');
  });

  it('fuzz: 10,000 seeded streams, split anywhere, never throw, keep at most the limit and frame alike', function () {
    this.timeout(20_000);
    const seed = fuzzSeed(12);
    this.test!.title += ` (seed ${seed}; FUZZ_SEED replays)`;
    const rng = new Rng(seed);
    const pieces = ['RES', 'PONG', 'HELLO', 'ERR', 'OVERLONG', ' ', '  ', '\r', '\n', '\n', '0', '1', '255', '256', '-1', '1e9', 'x', '!!!', 'aGk=', '====', '\u0000', 'é', '\ud800', '9'.repeat(400)];
    for (let i = 0; i < 10_000; i++) {
      const text = Array.from({ length: rng.int(1, 60) }, () => (rng.chance(0.05) ? rng.bytes(rng.int(1, 50)).toString('latin1') : rng.pick(pieces))).join('');
      const limit = rng.int(1, 500);
      const whole = new LineSplitter(limit);
      const cut = new LineSplitter(limit);
      const a = whole.push(text);
      const b: string[] = [];
      let at = 0;
      for (const { length } of rng.split(Buffer.alloc(text.length), 10)) {
        b.push(...cut.push(text.slice(at, (at += length))));
        expect(cut.pending.length).to.be.at.most(limit);
      }
      expect(b, `case ${i}`).to.deep.equal(a);
      for (const line of a) {
        const m = parseAgentLine(line);
        expect(['hello', 'pong', 'result', 'error', 'garbage'], `case ${i}: ${JSON.stringify(line)}`).to.include(m.kind);
        if (line.length > limit && !line.startsWith('OVERLONG ')) throw new Error(`case ${i}: a line of ${line.length} over the limit ${limit} was handed out`);
      }
    }
  });
});

