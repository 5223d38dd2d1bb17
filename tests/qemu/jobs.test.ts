/**
 * `harness run --jobs 2` for real: two test files in two worker processes at
 * once (their tests overlap in time), artifacts per worker, one merged JUnit
 * with both files' tests, the exit status of the worst worker, and SIGINT
 * passed on to the workers (exit 130, no worker left).
 */
import { expect } from 'chai';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';
import { descendants, stillAlive } from '../support/processes.js';

const { HARNESS_JUNIT: _j, ...baseEnv } = process.env;

describe('harness run --jobs 2 (worker processes)', function () {
  this.timeout(120_000);
  const root = mkdtempSync(join(tmpdir(), 'harness-jobs-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const spec = (name: string, body: string) => {
    const f = join(root, `${name}.test.mjs`);
    writeFileSync(f, body);
    return f;
  };
  /** A test that records when it ran and in which process, then waits. */
  const timed = (name: string, opts: { fail?: boolean; hold?: boolean } = {}) =>
    spec(
      name,
      `import { appendFileSync } from 'node:fs';
describe('${name}', () => {
  it('runs', async function () {
    this.timeout(0);
    const t0 = Date.now();
    ${opts.hold ? `appendFileSync(${JSON.stringify(join(root, 'held'))}, '${name}\\n'); await new Promise(() => {});` : 'await new Promise((r) => setTimeout(r, 1500));'}
    appendFileSync(${JSON.stringify(join(root, 'times'))}, JSON.stringify({ name: '${name}', pid: process.pid, t0, t1: Date.now() }) + '\\n');
    ${opts.fail ? "throw new Error('failed on purpose');" : ''}
  });
});
`,
    );
  const run = (args: string[], dir: string) =>
    execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', ...args], {
      reject: false,
      extendEnv: false,
      env: { ...baseEnv, HARNESS_ARTIFACTS: join(root, dir) },
    });

  it('runs two files at once in two workers and merges their results; the worst worker sets the exit status', async () => {
    const a = timed('alpha');
    const b = timed('beta', { fail: true });
    const r = await run(['--jobs', '2', '--spec', a, '--spec', b], 'two');
    expect(r.exitCode, String(r.stderr)).to.equal(1);
    const times = readFileSync(join(root, 'times'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { name: string; pid: number; t0: number; t1: number });
    expect(times.map((x) => x.name).sort()).to.deep.equal(['alpha', 'beta']);
    expect(times[0]!.pid, 'two processes').to.not.equal(times[1]!.pid);
    const overlap = Math.min(times[0]!.t1, times[1]!.t1) - Math.max(times[0]!.t0, times[1]!.t0);
    console.log(`      the two files overlapped ${overlap} ms`);
    expect(overlap, 'the tests ran at the same time').to.be.greaterThan(500);
    const junit = readFileSync(join(root, 'two', 'junit.xml'), 'utf8');
    expect(junit).to.include('<testsuite name="alpha"').and.include('<testsuite name="beta"').and.include('failed on purpose');
    const latest = join(root, 'two', 'latest');
    expect(existsSync(join(latest, 'workers', '1', 'junit.xml')) && existsSync(join(latest, 'workers', '2', 'junit.xml')), 'a folder per worker').to.equal(
      true,
    );
    expect(String(r.stdout))
      .to.match(/\[1\] /)
      .and.match(/\[2\] /)
      .and.include('1 passed, 1 failed, 0 skipped');
  });

  it('SIGINT is passed on to the workers: exit 130, the JUnit says interrupted, no worker left', async () => {
    const c = timed('gamma', { hold: true });
    const d = timed('delta', { hold: true });
    const p = run(['--jobs', '2', '--spec', c, '--spec', d], 'int');
    await withDeadline(
      (async () => {
        while (!existsSync(join(root, 'held')) || readFileSync(join(root, 'held'), 'utf8').trim().split('\n').length < 2) await sleep(50);
      })(),
      60_000,
      'both workers to hold their test',
    );
    const below = descendants(p.pid!);
    p.kill('SIGINT');
    const r = await p;
    expect(r.exitCode, String(r.stderr)).to.equal(130);
    expect(await stillAlive(below, 5000), 'processes left').to.deep.equal([]);
    const junit = readFileSync(join(root, 'int', 'junit.xml'), 'utf8');
    expect(junit.match(/interrupted by SIGINT/g)?.length, "both workers' tests failed as interrupted").to.be.at.least(2);
  });
});
