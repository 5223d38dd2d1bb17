/**
 * `harness run --jobs N`: the selected test files in N worker processes at
 * once, each a `harness run` of its own with its artifacts under this run's
 * folder (workers/<i>/), merged into one JUnit, results.json and summary.
 * Files of the lab suite share the profile's devices, so they go to one
 * worker (device leases keep even that safe, but a second worker would only
 * wait and skip); every other file is independent. Workers die with this
 * process (the parent-death helper); SIGINT/SIGTERM is passed on to them and
 * the run is marked interrupted as a single run is.
 */
import { readFileSync } from 'node:fs';
import { join, sep } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { withParentDeath } from '../qemu/parent-death.js';
import { junitXml, summaryText, type TestResult } from '../report/junit.js';
import { junitPath, writeFileAtomic } from '../report/run-files.js';
import { handleInterrupts, interruptExitCode, interruption } from '../util/interrupt.js';
import { repoRoot, runArtifactsDir } from '../util/paths.js';
import { exactTitles, fullTitle, type ListedTest } from './test-list.js';

export interface JobsPlan {
  /** Per worker: its files and the full titles it runs. */
  workers: Array<{ files: string[]; titles: string[] }>;
}

const LAB_DIR = `${sep}tests${sep}lab${sep}`;

/** Splits the selected tests by file into at most `jobs` workers; lab-suite files stay together. */
export function planJobs(selected: readonly ListedTest[], jobs: number): JobsPlan {
  const byFile = new Map<string, string[]>();
  for (const t of selected) byFile.set(t.file, [...(byFile.get(t.file) ?? []), fullTitle(t)]);
  const lab = [...byFile.keys()].filter((f) => f.includes(LAB_DIR));
  const units: string[][] = [...(lab.length ? [lab] : []), ...[...byFile.keys()].filter((f) => !f.includes(LAB_DIR)).map((f) => [f])];
  const workers = Array.from({ length: Math.min(jobs, units.length) }, () => ({ files: [] as string[], titles: [] as string[] }));
  // Largest units first, each to the worker with the fewest tests so far.
  const size = (u: string[]) => u.reduce((a, f) => a + byFile.get(f)!.length, 0);
  for (const u of units.sort((a, b) => size(b) - size(a))) {
    const w = workers.reduce((a, b) => (b.titles.length < a.titles.length ? b : a));
    w.files.push(...u);
    for (const f of u) w.titles.push(...byFile.get(f)!);
  }
  return { workers };
}

/** The exit status of the whole run from its workers': usage first, then an interrupt, a failure, untestable, pass. */
export function jobsExitStatus(codes: readonly number[]): number {
  for (const c of [128, 130, 143, 1]) if (codes.includes(c)) return c;
  if (codes.some((c) => c !== 0 && c !== 125)) return 1; // a worker that died of something else
  return codes.every((c) => c === 125) ? 125 : 0;
}

/** Runs the plan (after startRunFiles); returns the run's exit status. */
export async function runJobs(plan: JobsPlan, opts: { repeat: number; log: (line: string) => void; write: (text: string) => void }): Promise<number> {
  const cli = join(repoRoot, 'dist', 'harness', 'cli.js');
  const workers: ResultPromise[] = [];
  const dirs: string[] = [];
  for (const [i, w] of plan.workers.entries()) {
    const dir = join(runArtifactsDir(), 'workers', String(i + 1));
    dirs.push(dir);
    const args = [
      'run',
      ...w.files.flatMap((f) => ['--spec', f]),
      '--grep',
      exactTitles(w.titles),
      ...(opts.repeat > 1 ? ['--repeat', String(opts.repeat)] : []),
    ];
    const spawned = withParentDeath(process.execPath, ['--enable-source-maps', cli, ...args]);
    const p = execa(spawned.command, spawned.args, {
      env: { ...process.env, HARNESS_ARTIFACTS: dir, HARNESS_JUNIT: join(dir, 'junit.xml'), HARNESS_RESULTS_JSON: join(dir, 'results.json') },
      stdin: 'ignore',
      reject: false,
      all: true,
      buffer: false,
    });
    p.all?.setEncoding('utf8');
    let rest = '';
    p.all?.on('data', (t: string) => {
      const lines = (rest + t).split('\n');
      rest = lines.pop()!;
      for (const l of lines) opts.write(`[${i + 1}] ${l}\n`);
    });
    workers.push(p);
    opts.log(`worker ${i + 1} (pid ${p.pid}): ${w.files.length} files, ${w.titles.length} tests; artifacts ${dir}`);
  }
  const signal = (sig: NodeJS.Signals) => {
    for (const p of workers) p.kill(sig);
  };
  const stop = handleInterrupts(
    (i) => {
      opts.log(`${i.signal}: passed on to the workers; ${i.signal} again kills them`);
      signal(i.signal);
    },
    () => {
      signal('SIGKILL');
    },
  );
  let codes: number[];
  try {
    codes = (await Promise.all(workers)).map((r) => r.exitCode ?? 128 + 9);
  } finally {
    stop();
  }
  const results: TestResult[] = [];
  for (const [i, dir] of dirs.entries()) {
    try {
      results.push(...(JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8')) as TestResult[]));
    } catch (e) {
      results.push({
        suite: '(run)',
        title: `worker ${i + 1} gave its results`,
        state: 'failed',
        durationMs: 0,
        error: `worker ${i + 1} (exit ${codes[i]}) wrote no results: ${(e as Error).message}`,
      });
    }
  }
  const xml = junitXml(results);
  writeFileAtomic(junitPath(), xml);
  if (!process.env.HARNESS_JUNIT) writeFileAtomic(join(runArtifactsDir(), 'junit.xml'), xml);
  writeFileAtomic(join(runArtifactsDir(), 'results.json'), JSON.stringify(results, null, 1));
  const stopped = interruption();
  opts.write(`\n${summaryText(results)}${stopped ? `\nINTERRUPTED by ${stopped.signal}` : ''}\nJUnit: ${junitPath()}\nArtifacts: ${runArtifactsDir()}\n`);
  opts.log(`workers exited ${codes.join(', ')}`);
  return stopped ? interruptExitCode(stopped.signal) : jobsExitStatus(codes);
}
