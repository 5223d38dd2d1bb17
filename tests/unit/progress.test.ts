import { expect } from 'chai';
import { formatElapsed, heartbeat, heartbeatLine, progressMode, withHeartbeat } from '../../harness/util/progress.js';
import { sleep } from '../../harness/util/deadline.js';

describe('live progress: heartbeats on long waits', () => {
  it('says how long, what for and the last console line, on one line', () => {
    expect(formatElapsed(95_000)).to.equal('1m35s');
    expect(formatElapsed(9_999)).to.equal('9s');
    // A real line of the virtual lab's L1 console while it boots.
    const tail = '[    9.052108] virtio_blk virtio1: [vda] 4194304 512-byte logical blocks (2.15 GB/2.00 GiB)\n';
    expect(heartbeatLine("l1's guest to boot (its agent to answer)", 90_500, tail)).to.equal(
      "[heartbeat] 1m30s waiting for l1's guest to boot (its agent to answer); last console line: [    9.052108] virtio_blk virtio1: [vda] 4194304 512-byte logical blocks (2.15 GB/2.00 GiB)",
    );
    expect(heartbeatLine('x', 0, `${'a'.repeat(300)}\n\n`)).to.have.length(`[heartbeat] 0s waiting for x; last console line: `.length + 160);
    expect(heartbeatLine('x', 0, '')).to.equal('[heartbeat] 0s waiting for x');
  });

  it('CI (no TTY, or CI=true) gets plain lines; a terminal the status line', () => {
    expect(progressMode({ isTTY: false }, {})).to.equal('lines');
    expect(progressMode({ isTTY: true }, { CI: 'true' })).to.equal('lines');
    expect(progressMode({ isTTY: true }, {})).to.equal('tty');
  });

  it('plain mode: one line per interval, none for a wait shorter than one, none after it stops', async () => {
    const out: string[] = [];
    let seen = 'first line';
    const stop = heartbeat('L1', { mode: 'lines', everyMs: 40, write: (s) => out.push(s), last: () => seen });
    await sleep(10);
    expect(out).to.deep.equal([]);
    await sleep(50);
    seen = 'second line';
    await sleep(45);
    stop();
    const n = out.length;
    await sleep(100);
    expect(out.length, 'stopped').to.equal(n);
    expect(n).to.be.within(2, 3);
    expect(out[0]).to.match(/^\[heartbeat\] 0s waiting for L1; last console line: first line\n$/);
    expect(out[1]).to.contain('last console line: second line');
  });

  it('terminal mode rewrites one status line and clears it at the end', async () => {
    const out: string[] = [];
    await withHeartbeat('the build', () => sleep(120), { mode: 'tty', everyMs: 30, write: (s) => out.push(s) });
    expect(out.length).to.be.greaterThan(1);
    for (const s of out.slice(0, -1)) expect(s).to.match(/^\r\x1b\[K\[heartbeat\] 0s waiting for the build$/);
    expect(out.at(-1)).to.equal('\r\x1b[K');
  });

  it('withHeartbeat stops its heartbeat when the wait fails', async () => {
    const out: string[] = [];
    const e = await withHeartbeat('x', () => Promise.reject(new Error('boom')), { mode: 'lines', everyMs: 10, write: (s) => out.push(s) }).catch(
      (x: Error) => x,
    );
    expect((e as Error).message).to.equal('boom');
    await sleep(40);
    expect(out).to.deep.equal([]);
  });
});
