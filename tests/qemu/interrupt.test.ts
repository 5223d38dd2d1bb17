/**
 * An interrupted or killed `harness run` (issue 12, parts 2 and 3), against a
 * real child run holding a real QEMU: SIGINT/SIGTERM fail the test as
 * interrupted, stop QEMU by PID, write reports that say so and exit 130/143;
 * a second SIGINT ends it at once; a SIGKILL (QEMU running or SIGSTOPped)
 * leaves no process, and the next run sweeps the temp folder it left. Each
 * child gets its own TMPDIR and artifacts tree: nothing shared is scanned.
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { processStart } from '../../harness/util/owner.js';
import { repoRoot } from '../../harness/util/paths.js';
import { RUN_TMP_PREFIX, systemTmpdir } from '../../harness/util/run-tmp.js';
import { alive, descendants, stillAlive } from '../support/processes.js';

const { QEMU: _q, QEMU_X86_64: _x, QEMU_AARCH64: _a, HARNESS_L2_QEMU_X86_64: _l, HARNESS_JUNIT: _j, ...baseEnv } = process.env;
const root = mkdtempSync(join(tmpdir(), 'harness-interrupt-test-'));
const dist = (p: string) => JSON.stringify(pathToFileURL(join(repoRoot, 'dist', 'harness', p)).href);

/** A spec whose first test holds a QEMU (SIGSTOPped when asked) until the run is stopped. */
const spec = join(root, 'holds-qemu.test.mjs');
writeFileSync(
  spec,
  `import { writeFileSync } from 'node:fs';
import { useMachines } from ${dist('testing/fixtures.js')};
describe('interrupt fixture', () => {
  const machines = useMachines();
  it('holds a QEMU', async function () {
    this.timeout(0);
    const m = await machines.launch({ arch: 'x86_64', machine: { type: 'none' }, paused: true });
    if (process.env.FIXTURE_SIGSTOP === '1') m.kill('SIGSTOP');
    writeFileSync(process.env.FIXTURE_MARKER, JSON.stringify({ qemu: m.pid }));
    await new Promise(() => {});
  });
  it('comes after', () => {});
  // A teardown that never ends: the interrupt's deadline must cut it short.
  after(function () {
    this.timeout(0);
    if (process.env.FIXTURE_HANG_AFTER === '1') return new Promise(() => {});
  });
});
`,
);
const quick = join(root, 'quick.test.mjs');
writeFileSync(quick, `describe('quick', () => { it('passes', () => {}); });\n`);

interface Child {
  proc: ResultPromise;
  dir: string;
  tmp: string;
  marker: string;
}

/** Each child's TMPDIR, short: QEMU's socket paths below it must fit in 108 bytes. */
const tmps = new Map<string, string>();

function start(name: string, args: string[], env: Record<string, string> = {}): Child {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  // In the system temp folder, not this run's (confined $TMPDIR): nested, the paths would not fit.
  const tmp = tmps.get(name) ?? mkdtempSync(join(systemTmpdir(), 'hi-'));
  tmps.set(name, tmp);
  const marker = join(dir, 'marker.json');
  const proc = execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', ...args], {
    reject: false,
    extendEnv: false,
    env: { ...baseEnv, HARNESS_ARTIFACTS: join(dir, 'artifacts'), TMPDIR: tmp, FIXTURE_MARKER: marker, ...env },
    timeout: 120_000,
  });
  return { proc, dir, tmp, marker };
}

/** Waits until the fixture test holds its QEMU; returns that QEMU's pid. */
async function holding(c: Child): Promise<number> {
  return withDeadline(
    (async () => {
      for (;;) {
        // The child writes the marker with a plain write: an empty or partial file means "not yet".
        const text = existsSync(c.marker) ? readFileSync(c.marker, 'utf8') : '';
        if (text.trim().endsWith('}')) return (JSON.parse(text) as { qemu: number }).qemu;
        if (c.proc.exitCode !== null) {
          const r = await c.proc;
          throw new Error(`harness run ended early (exit ${r.exitCode}): ${String(r.stderr)}\n${String(r.stdout)}`);
        }
        await sleep(50);
      }
    })(),
    60_000,
    'the fixture test to launch its QEMU',
  );
}

const runTmpDirs = (tmp: string) => readdirSync(tmp).filter((n) => n.startsWith(RUN_TMP_PREFIX));

describe('an interrupted or killed harness run (real QEMU)', function () {
  this.timeout(180_000);
  after(() => {
    for (const t of tmps.values()) rmSync(t, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });
  beforeEach(async function () {
    await requireQemu(this, 'x86_64');
  });

  for (const [signal, code, stopped] of [
    ['SIGINT', 130, false],
    ['SIGTERM', 143, true],
  ] as const) {
    it(`${signal}${stopped ? ' with QEMU SIGSTOPped' : ''}: the test fails as interrupted, QEMU is stopped, JUnit and latest describe this run, exit ${code}`, async () => {
      const c = start(`${signal}-${stopped}`, ['--spec', spec], stopped ? { FIXTURE_SIGSTOP: '1' } : {});
      // An older run that passed: its JUnit and latest link must not stand for this one at any moment.
      const artifacts = join(c.dir, 'artifacts');
      mkdirSync(join(artifacts, 'runs', '20000101-000000-1'), { recursive: true });
      writeFileSync(join(artifacts, 'junit.xml'), '<testsuites tests="1" failures="0"/>\n');
      symlinkSync(join('runs', '20000101-000000-1'), join(artifacts, 'latest'));
      const qemu = await holding(c);
      const own = `-${c.proc.pid}`;
      expect(readlinkSync(join(artifacts, 'latest')), 'latest while the run goes on').to.match(new RegExp(`${own}$`));
      expect(readFileSync(join(artifacts, 'junit.xml'), 'utf8'), 'JUnit while the run goes on').to.include('has not written its results').and.include('failures="1"');
      const below = descendants(c.proc.pid!);
      expect(below, 'the QEMU is the run\'s child').to.include(qemu);
      const t0 = Date.now();
      c.proc.kill(signal);
      const r = await c.proc;
      const ms = Date.now() - t0;
      console.log(`      ${signal}${stopped ? ' (QEMU stopped)' : ''}: exit ${r.exitCode} after ${ms} ms; ${below.length} processes below the run before`);
      expect(r.exitCode, String(r.stderr)).to.equal(code);
      expect(ms, 'from the signal to the exit').to.be.below(15_000);
      expect(await stillAlive(below, 5000), 'processes left').to.deep.equal([]);
      const junit = readFileSync(join(artifacts, 'junit.xml'), 'utf8');
      expect(junit).to.match(/name="holds a QEMU"[^]*?<failure message="InterruptedError: interrupted by SIG(INT|TERM)/);
      expect(junit).to.include(`interrupted by ${signal}`);
      expect(junit).to.match(new RegExp(`name="comes after"[^]*?never ran: the run was interrupted by ${signal}`));
      expect(junit).to.match(/classname="\(run\)" name="the run finished"/);
      expect(junit).not.to.include('has not written its results');
      expect(readlinkSync(join(artifacts, 'latest'))).to.match(new RegExp(`${own}$`));
      // The run folder's copy (ATTACHMENT paths relative to itself) says the same.
      expect(readFileSync(join(artifacts, 'latest', 'junit.xml'), 'utf8')).to.include(`interrupted by ${signal}`).and.not.include('has not written its results');
      expect(String(r.stdout)).to.include(`INTERRUPTED by ${signal}`);
      expect(runTmpDirs(c.tmp), 'temp folders left').to.deep.equal([]);
    });
  }

  it('a second SIGINT ends the run at once (QEMU SIGSTOPped), and no QEMU is left', async () => {
    const c = start('twice', ['--spec', spec], { FIXTURE_SIGSTOP: '1', HARNESS_INTERRUPT_DEADLINE_MS: '60000' });
    const qemu = await holding(c);
    c.proc.kill('SIGINT');
    await sleep(200);
    const t0 = Date.now();
    c.proc.kill('SIGINT');
    const r = await c.proc;
    const ms = Date.now() - t0;
    console.log(`      second SIGINT: exit ${r.exitCode} after ${ms} ms`);
    expect(r.exitCode, String(r.stderr)).to.equal(130);
    expect(ms).to.be.below(2000);
    expect(String(r.stderr)).to.include('SIGINT again: ending now');
    expect(await stillAlive([qemu], 5000), 'QEMU left').to.deep.equal([]);
    // The JUnit written at the start stands: it fails, saying the run did not finish.
    expect(readFileSync(join(c.dir, 'artifacts', 'junit.xml'), 'utf8')).to.include('has not written its results');
  });

  it('hooks that never end after SIGINT: at the deadline QEMU is SIGKILLed and the reports are written anyway (exit 130)', async () => {
    const c = start('deadline', ['--spec', spec], { FIXTURE_SIGSTOP: '1', FIXTURE_HANG_AFTER: '1', HARNESS_INTERRUPT_DEADLINE_MS: '3000' });
    const qemu = await holding(c);
    const t0 = Date.now();
    c.proc.kill('SIGINT');
    const r = await c.proc;
    const ms = Date.now() - t0;
    console.log(`      SIGINT with a hanging hook: exit ${r.exitCode} after ${ms} ms`);
    expect(r.exitCode, String(r.stderr)).to.equal(130);
    expect(ms).to.be.within(2900, 10_000);
    expect(String(r.stderr)).to.include('did not end within 3 s');
    expect(await stillAlive([qemu], 5000), 'QEMU left').to.deep.equal([]);
    const junit = readFileSync(join(c.dir, 'artifacts', 'junit.xml'), 'utf8');
    expect(junit).to.include('interrupted by SIGINT').and.not.include('has not written its results');
  });

  for (const stopped of [false, true]) {
    it(`SIGKILL with QEMU ${stopped ? 'SIGSTOPped' : 'running'}: no process is left, and the next run sweeps its temp folder (not a live run's)`, async () => {
      const c = start(`kill-${stopped}`, ['--spec', spec], stopped ? { FIXTURE_SIGSTOP: '1' } : {});
      const qemu = await holding(c);
      const below = descendants(c.proc.pid!);
      c.proc.kill('SIGKILL');
      await c.proc;
      expect(await stillAlive(below, 5000), 'processes left').to.deep.equal([]);
      expect(alive(qemu)).to.equal(false);
      const left = runTmpDirs(c.tmp);
      expect(left, 'the killed run\'s temp folder').to.have.length(1);
      expect(left[0]).to.match(new RegExp(`^${RUN_TMP_PREFIX}${c.proc.pid}-`));
      // A live run's folder (this process's name) is never swept.
      const live = `${RUN_TMP_PREFIX}${process.pid}-${processStart('self')}`;
      mkdirSync(join(c.tmp, live));
      const next = start(`kill-${stopped}`, ['--spec', quick]);
      const r = await next.proc;
      expect(r.exitCode, String(r.stderr)).to.equal(0);
      expect(String(r.stderr)).to.include('temp folder(s) left by killed runs');
      expect(runTmpDirs(c.tmp)).to.deep.equal([live]);
    });
  }

  it('report paths that cannot be written are refused before any test, naming them (exit 128)', async () => {
    const dirJunit = join(root, 'junit-dir');
    mkdirSync(dirJunit, { recursive: true });
    const notDir = join(root, 'a-file');
    writeFileSync(notDir, '');
    for (const bad of [dirJunit, join(notDir, 'junit.xml')]) {
      const c = start('bad-junit', ['--spec', spec, '--junit', bad]);
      const r = await c.proc;
      expect(r.exitCode, String(r.stderr)).to.equal(128);
      expect(String(r.stderr)).to.include(bad);
      expect(existsSync(c.marker), 'a test ran').to.equal(false);
    }
  });
});
