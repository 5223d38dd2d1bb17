import { expect } from 'chai';
import { Console, ConsoleClosedError, ConsoleTimeoutError, type ConsoleSource } from '../../harness/guest/console.js';

class FakeSource implements ConsoleSource {
  private data = new Set<(t: string) => void>();
  private closeCbs = new Set<() => void>();
  isClosed = false;
  logPath = '/tmp/serial0.log';
  constructor(private early = '') {}
  onData(cb: (t: string) => void): () => void {
    this.data.add(cb);
    return () => this.data.delete(cb);
  }
  onClose(cb: () => void): () => void {
    this.closeCbs.add(cb);
    return () => this.closeCbs.delete(cb);
  }
  tail(n = 2000): string {
    return this.early.slice(-n);
  }
  emit(t: string): void {
    for (const cb of this.data) cb(t);
  }
  close(): void {
    this.isClosed = true;
    for (const cb of this.closeCbs) cb();
  }
}

// Lines from a real boot of the harness kernel (7.2.13, q35, TCG).
const boot = [
  '[    0.000000] Linux version 7.2.13 (root@host) #1 SMP',
  '[    0.912000] DMAR: Intel(R) Virtualization Technology for Directed I/O',
  'harness-init: started (kernel 7.2.13, uptime 1.52 s)',
  'harness-init: agent listening on /dev/vport1p1 (port org.harness.agent)',
];

describe('guest console', () => {
  it('finds a milestone printed before the Console existed', async () => {
    const src = new FakeSource(boot.slice(0, 2).join('\n') + '\n');
    const c = new Console(src);
    const m = await c.waitFor(/DMAR: Intel\(R\) Virtualization/, 100);
    expect(m.line).to.equal(boot[1]);
  });

  it('waits for text split across chunks and returns the whole line', async () => {
    const src = new FakeSource();
    const c = new Console(src);
    const p = c.waitFor('agent listening', 1000);
    src.emit(boot[2] + '\nharness-init: agent list');
    src.emit('ening on /dev/vport1p1 (port org.harness.agent)\n');
    const m = await p;
    expect(m.line).to.equal(boot[3]);
  });

  it('finds successive milestones in order from a cursor', async () => {
    const src = new FakeSource();
    const c = new Console(src);
    src.emit('harness-init: a\nharness-init: b\n');
    expect((await c.waitFor(/harness-init: (\w)/, 100)).match[1]).to.equal('a');
    expect((await c.waitFor(/harness-init: (\w)/, 100)).match[1]).to.equal('b');
    await c.waitFor(/harness-init: (\w)/, 50).then(
      () => expect.fail('a third milestone was found'),
      (e: unknown) => expect(e).to.be.instanceOf(ConsoleTimeoutError),
    );
    expect((await c.waitFor(/harness-init: (\w)/, 100, { from: 'start' })).match[1]).to.equal('a');
  });

  it('times out with the console tail and the log path in the message', async () => {
    const src = new FakeSource();
    const c = new Console(src);
    src.emit(boot.join('\n') + '\nKernel panic - not syncing: VFS: Unable to mount root fs\n');
    const e = (await c.waitFor('never printed', 30).catch((x: unknown) => x)) as ConsoleTimeoutError;
    expect(e).to.be.instanceOf(ConsoleTimeoutError);
    expect(e.message).to.include('"never printed"').and.include('no answer within 30 ms');
    expect(e.message).to.include('| Kernel panic - not syncing').and.include('/tmp/serial0.log');
  });

  it('fails at once when the console closes (QEMU exited)', async () => {
    const src = new FakeSource();
    const c = new Console(src);
    const p = c.waitFor('login', 10_000);
    src.emit('[    2.0] reboot: Restarting system\n');
    src.close();
    const e = (await p.catch((x: unknown) => x)) as ConsoleClosedError;
    expect(e).to.be.instanceOf(ConsoleClosedError);
    expect(e.message).to.include('Restarting system');
  });
});
