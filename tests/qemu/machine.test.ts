import { expect } from 'chai';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { UnixListener } from '../../harness/qmp/transport.js';
import { dirname, join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { findQemu, qemuVersion, QemuNotFoundError } from '../../harness/qemu/binary.js';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { LaunchError, Machine } from '../../harness/qemu/machine.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu, requireQemuFeatures, requireReleaseQemu } from '../../harness/testing/prereqs.js';
import { nativeToolPath } from '../../harness/util/native-tools.js';
import { repoRoot } from '../../harness/util/paths.js';

/** Running or stopped; a zombie (exited, not yet reaped by its new parent) counts as gone. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  return procState(pid) !== 'Z';
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
    const dir = await mkdtemp(join(tmpdir(), 'harness-test-'));
    const l = await UnixListener.create(join(dir, 'x.sock'));
    expect(statSync(l.path).mode & 0o777).to.equal(0o600);
    await l.close();
    await rm(dir, { recursive: true, force: true });
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
});

/**
 * A child harness process launches QEMU (through Machine.launch, as every test
 * does) and is SIGKILLed: no teardown, no exit hook runs. The parent-death
 * SIGKILL must end QEMU on every version, also while QEMU is SIGSTOPped
 * (QEMU's own exit-with-parent sends SIGTERM, which a stopped process keeps
 * pending forever). Rows: the reference QEMU and trixie's 10.0, which has no
 * exit-with-parent at all.
 */
describe('No QEMU outlives a SIGKILLed harness', function () {
  this.timeout(60_000);
  const machines = useMachines();
  const socketDirs: string[] = [];
  after(async () => {
    for (const d of socketDirs.splice(0)) if (d.includes('harness-qemu-')) await rm(d, { recursive: true, force: true });
  });
  const rows: Array<{ qemu: string; release?: string }> = [{ qemu: 'the reference QEMU' }, { qemu: "trixie's QEMU", release: 'trixie' }];
  for (const row of rows) {
    for (const stopped of [false, true]) {
      it(`${row.qemu}${stopped ? ', SIGSTOPped,' : ''} dies within 5 s of its harness's SIGKILL, and its pid is QEMU's`, async function () {
        const bin = row.release ? await requireReleaseQemu(this, row.release) : await requireQemu(this, 'x86_64');
        const { qemuPid, child } = await childHarnessWithQemu(machines.artifactsDir, bin.path);
        expect(alive(qemuPid)).to.equal(true);
        // The helper exec'd in place: the pid the Machine holds is QEMU's own process.
        const argv = readFileSync(`/proc/${qemuPid}/cmdline`, 'utf8').split('\0');
        expect(argv).to.include(bin.path);
        expect(argv.join(' '), 'QEMU not given exit-with-parent').to.not.include('exit-with-parent');
        // The killed child cannot remove its socket folder; this test does.
        const sockets = dirname(/^unix:(.*)$/.exec(argv[argv.indexOf('-qmp') + 1] ?? '')?.[1] ?? '');
        socketDirs.push(sockets);
        if (stopped) {
          process.kill(qemuPid, 'SIGSTOP');
          await waitFor(() => procState(qemuPid) === 'T', 5000, `QEMU ${qemuPid} to stop`);
        }
        child.kill('SIGKILL');
        await child;
        await waitFor(() => !alive(qemuPid), 5000, `QEMU ${qemuPid} (state ${procState(qemuPid)}) to die after its parent ${child.pid} was SIGKILLed`).catch(
          (e: unknown) => {
            // Never leave it behind, even when the assertion fails.
            if (alive(qemuPid)) process.kill(qemuPid, 'SIGKILL');
            throw e;
          },
        );
      });
    }
  }

  it("why not QEMU's own exit-with-parent: a SIGSTOPped QEMU outlives its killed parent (SIGTERM stays pending)", async function () {
    const probe = await requireQemuFeatures(this, 'x86_64', { option: 'run-with', param: 'exit-with-parent' });
    const b = probe.binary;
    // A bare child that runs QEMU with exit-with-parent and nothing else.
    const script = `
      import { spawn } from 'node:child_process';
      const [command, ...args] = JSON.parse(process.argv[1]);
      const p = spawn(command, args, { stdio: 'ignore', env: { ...process.env, ...JSON.parse(process.argv[2]) } });
      console.log(p.pid);
      setInterval(() => {}, 1000);`;
    const args = [...b.prefixArgs, ...b.baseArgs, '-machine', 'none', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-run-with', 'exit-with-parent=on'];
    const child = execa('node', ['--input-type=module', '-e', script, JSON.stringify([b.command, ...args]), JSON.stringify(b.env)], { reject: false });
    const qemuPid = Number(await withDeadline(new Promise<string>((r) => child.stdout!.once('data', (d: Buffer) => r(String(d).trim()))), 10_000, 'the bare child to start QEMU'));
    try {
      await waitFor(() => readFileSync(`/proc/${qemuPid}/cmdline`, 'utf8').includes('exit-with-parent'), 5000, `QEMU ${qemuPid} to exec`);
      process.kill(qemuPid, 'SIGSTOP');
      await waitFor(() => procState(qemuPid) === 'T', 5000, `QEMU ${qemuPid} to stop`);
      child.kill('SIGKILL');
      await child;
      await sleep(1000);
      expect(procState(qemuPid), `${probe.version.text}: a stopped QEMU with exit-with-parent=on still there 1 s after its parent died`).to.equal('T');
    } finally {
      if (alive(qemuPid)) process.kill(qemuPid, 'SIGKILL');
      child.kill('SIGKILL');
    }
  });

  it('the helper refuses to start a program once its parent is gone (126), names a bad pid (125) and a program it cannot run (127)', async () => {
    const helper = nativeToolPath('pdeathsig-exec');
    // Its parent is this process; any other pid means the parent it was given is gone.
    const gone = await execa(helper, ['1', '/bin/echo', 'started'], { reject: false, timeout: 5000 });
    expect(gone).to.include({ exitCode: 126, stdout: '' });
    expect(gone.stderr).to.match(/pdeathsig-exec: parent 1 is gone \(parent is now \d+\); not starting \/bin\/echo/);
    const ok = await execa(helper, [String(process.pid), '/bin/echo', 'started'], { reject: false, timeout: 5000 });
    expect(ok).to.include({ exitCode: 0, stdout: 'started' });
    const bad = await execa(helper, ['x1', '/bin/echo'], { reject: false, timeout: 5000 });
    expect(bad.exitCode).to.equal(125);
    expect(bad.stderr).to.include('PARENT_PID x1 is not a pid');
    const missing = await execa(helper, [String(process.pid), '/nonexistent/qemu'], { reject: false, timeout: 5000 });
    expect(missing.exitCode).to.equal(127);
    expect(missing.stderr).to.include('cannot execute /nonexistent/qemu: No such file or directory');
  });

  it('names the script to run when the parent-death helper is missing', async () => {
    const script = `
      import { Machine } from ${JSON.stringify(join(repoRoot, 'dist/harness/qemu/machine.js'))};
      try { await Machine.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true }, { artifactsDir: process.argv[1] }); }
      catch (e) { console.log(e.name + ': ' + e.message); }`;
    const empty = await mkdtemp(join(tmpdir(), 'harness-nohelper-'));
    try {
      // An empty cache: no helper, and no reference QEMU either, so point at this one.
      const r = await execa('node', ['--input-type=module', '-e', script, machines.artifactsDir], {
        reject: false,
        env: { ...process.env, HARNESS_CACHE_DIR: empty, QEMU_X86_64: findQemu('x86_64').path },
        timeout: 20_000,
      });
      expect(r.stdout).to.match(/^ParentDeathHelperMissing: the parent-death helper \S+pdeathsig-exec is not built: run scripts\/build-tools\.sh/);
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});

/** Starts `node` that launches QEMU through Machine.launch and idles; resolves with QEMU's pid. */
async function childHarnessWithQemu(artifactsDir: string, qemuPath: string): Promise<{ qemuPid: number; child: ResultPromise }> {
  const script = `
    import { Machine } from ${JSON.stringify(join(repoRoot, 'dist/harness/qemu/machine.js'))};
    import { findQemu } from ${JSON.stringify(join(repoRoot, 'dist/harness/qemu/binary.js'))};
    const m = await Machine.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true }, { binary: findQemu('x86_64', { path: process.argv[2] }), artifactsDir: process.argv[1] });
    console.log(m.pid);
    setInterval(() => {}, 1000);`;
  const child = execa('node', ['--input-type=module', '-e', script, artifactsDir, qemuPath], { reject: false, buffer: true });
  const line = await withDeadline(
    new Promise<string>((resolve, reject) => {
      child.stdout!.once('data', (d: Buffer) => resolve(String(d).trim()));
      void child.then((r) => reject(new Error(`child harness exited (${r.exitCode ?? r.signal}) before reporting a QEMU pid: ${r.stderr}`)));
    }),
    20_000,
    'the child harness to report its QEMU pid',
  ).catch((e: unknown) => {
    child.kill('SIGKILL');
    throw e;
  });
  const qemuPid = Number(line);
  if (!Number.isInteger(qemuPid) || qemuPid <= 0) throw new Error(`child harness printed ${JSON.stringify(line)}, not a pid`);
  return { qemuPid, child };
}

/** The state letter of /proc/PID/stat (R, S, T, Z, ...), or "gone". */
function procState(pid: number): string {
  try {
    return / \S+\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? '?';
  } catch {
    return 'gone';
  }
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  await withDeadline(
    (async () => {
      while (!cond()) await sleep(20);
    })(),
    ms,
    what,
  );
}

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
