import { expect } from 'chai';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { UnixListener } from '../../harness/qmp/transport.js';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { findQemu, qemuVersion, QemuNotFoundError } from '../../harness/qemu/binary.js';
import { LaunchError, Machine } from '../../harness/qemu/machine.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { repoRoot } from '../../harness/util/paths.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('Machine lifecycle', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const machines = useMachines();

  it('launches, is ready when QMP answers, and writes its artifacts', async () => {
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'q35' }, paused: true, trace: ['qmp_*'] });
    await m.qmp.queryStatus();
    expect(alive(m.pid)).to.equal(true);
    const cmdline = readFileSync(join(m.artifactsDir, 'cmdline.txt'), 'utf8');
    expect(cmdline).to.include('-machine q35').and.include('-S');
    const exit = await m.shutdown();
    expect(exit).to.include({ code: 0, signal: null });
    expect(alive(m.pid)).to.equal(false);
    const transcript = readFileSync(join(m.artifactsDir, 'qmp.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(transcript[0]).to.have.nested.property('msg.QMP');
    expect(transcript.some((l: { msg: { execute?: string } }) => l.msg.execute === 'quit')).to.equal(true);
    expect(readFileSync(join(m.artifactsDir, 'trace.log'), 'utf8')).to.match(/^qmp_\w+/m);
  });

  it('keeps its sockets in a private 0700 directory, each socket 0600, removed at shutdown', async () => {
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true });
    const sock = /-qmp unix:(\S+)/.exec(readFileSync(join(m.artifactsDir, 'cmdline.txt'), 'utf8'))![1]!;
    expect(statSync(dirname(sock)).mode & 0o777).to.equal(0o700);
    await m.shutdown();
    expect(existsSync(dirname(sock))).to.equal(false);
    const l = await UnixListener.create(join(await mkdtemp(join(tmpdir(), 'harness-test-')), 'x.sock'));
    expect(statSync(l.path).mode & 0o777).to.equal(0o600);
    await l.close();
  });

  it('fails a launch with the command line, exit status and stderr', async () => {
    const err = await machines
      .launch({ arch: 'x86_64', machine: { type: 'q35' }, paused: true, devices: [{ driver: 'no-such-device' }] })
      .catch((e: unknown) => e);
    expect(err).to.be.instanceOf(LaunchError);
    const e = err as LaunchError;
    expect(e.exit).to.include({ code: 1 });
    expect(e.stderr).to.match(/'no-such-device' is not a valid device model name/);
    expect(e.message).to.include('-device').and.include('exit status 1').and.include(e.artifactsDir);
    expect(Machine.liveCount).to.equal(0);
  });

  it('escalates to SIGTERM and SIGKILL when quit gets no answer', async () => {
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true });
    m.kill('SIGSTOP'); // quit cannot be answered, SIGTERM stays pending: only SIGKILL works
    const exit = await m.shutdown({ quitTimeoutMs: 200, termTimeoutMs: 200 });
    expect(exit.signal).to.equal('SIGKILL');
    expect(alive(m.pid)).to.equal(false);
  });

  it('leaves no QEMU behind when the harness process is SIGKILLed (exit-with-parent)', async function () {
    this.timeout(30_000);
    const script = `
      import { Machine } from ${JSON.stringify(join(repoRoot, 'dist/harness/qemu/machine.js'))};
      const m = await Machine.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true }, { artifactsDir: process.argv[1] });
      console.log(m.pid);
      setInterval(() => {}, 1000);`;
    const child = execa('node', ['--input-type=module', '-e', script, machines.artifactsDir], { reject: false, buffer: true });
    const pid = await new Promise<number>((resolve, reject) => {
      child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
      setTimeout(() => reject(new Error('child did not report a QEMU pid')), 20_000);
    });
    expect(alive(pid)).to.equal(true);
    child.kill('SIGKILL');
    await child;
    const deadline = Date.now() + 5000;
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(alive(pid), `QEMU ${pid} outlived its parent`).to.equal(false);
  });
});

describe('QEMU binary discovery', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });

  it('prefers the user’s QEMU from the environment', () => {
    const ref = findQemu('x86_64', { env: {} });
    const user = findQemu('x86_64', { env: { QEMU_X86_64: ref.path } });
    expect(user.source).to.equal('environment');
    expect(findQemu('x86_64', { env: { QEMU_X86_64: ref.path }, path: ref.path }).source).to.equal('option');
    // $QEMU names one emulator; it is not taken for another arch.
    expect(findQemu('aarch64', { env: { QEMU: ref.path } }).source).to.equal('reference');
  });

  it('names a missing path and a binary that is not QEMU', async () => {
    expect(() => findQemu('x86_64', { path: '/nonexistent/qemu' })).to.throw(QemuNotFoundError, /\/nonexistent\/qemu.*does not exist/);
    const err = await qemuVersion(findQemu('x86_64', { path: '/bin/true' })).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QemuNotFoundError);
    expect(String(err)).to.match(/\/bin\/true is not QEMU/);
  });

  it('reads the version', async () => {
    const v = await qemuVersion(findQemu('x86_64'));
    expect(v.text).to.match(/^QEMU emulator version \d+\.\d+\.\d+/);
  });
});
