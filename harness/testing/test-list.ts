/**
 * The static list of tests: compiled suite files loaded with mocha without
 * running them, and every test's title path and file. One list serves
 * `harness run --list`, `--grep`, `--repeat`, `--failed`, and the virtual
 * lab, which registers L1's tests up front from it and checks L1's results
 * against it (a test L1 was expected to run but did not report fails).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type Mocha from 'mocha';
import type { TestResult } from '../report/junit.js';
import { repoRoot } from '../util/paths.js';
import { scaled } from '../util/timeouts.js';

/** The suites `harness run` knows, as folders of compiled tests under dist/tests. */
export const SUITES = ['qemu', 'guest', 'virtual-lab', 'lab'] as const;
export type SuiteName = (typeof SUITES)[number];

export interface ListedTest {
  /** The compiled test file that defines it. */
  file: string;
  /** Titles of the enclosing describe blocks, outermost first. */
  path: string[];
  title: string;
}

/** How a reporter's result names its test (TestResult.suite is the path joined with ' › '). */
export const testKey = (t: Pick<ListedTest, 'path' | 'title'>): string => [...t.path, t.title].join(' › ');
export const resultKey = (r: Pick<TestResult, 'suite' | 'title'>): string => (r.suite === '(root)' ? r.title : `${r.suite} › ${r.title}`);
/** mocha's own fullTitle(), which --grep matches. */
export const fullTitle = (t: Pick<ListedTest, 'path' | 'title'>): string => [...t.path, t.title].join(' ');

/** Compiled test files of the named suites, sorted (the order mocha runs them in). */
export function suiteFiles(suites: readonly string[], root = join(repoRoot, 'dist', 'tests')): string[] {
  const files: string[] = [];
  for (const s of suites) {
    if (!(SUITES as readonly string[]).includes(s)) throw new Error(`unknown suite ${JSON.stringify(s)} (known: ${SUITES.join(', ')})`);
    const dir = join(root, s);
    if (!existsSync(dir)) continue;
    for (const f of (readdirSync(dir, { recursive: true }) as string[]).sort()) if (f.endsWith('.test.js')) files.push(join(dir, f));
  }
  return files;
}

/** Every test under `suite`, in run order, with its listing. */
export function collectTests(suite: Mocha.Suite): Array<{ test: Mocha.Test; listed: ListedTest }> {
  const out: Array<{ test: Mocha.Test; listed: ListedTest }> = [];
  const walk = (s: Mocha.Suite, path: string[]): void => {
    const here = s.root ? path : [...path, s.title];
    for (const t of s.tests) out.push({ test: t, listed: { file: t.file ?? s.file ?? '', path: here, title: t.title } });
    for (const c of s.suites) walk(c, here);
  };
  walk(suite, []);
  return out;
}

/** Removes every test `keep` refuses from the tree (mocha then skips suites left empty, hooks and all). */
export function filterTests(suite: Mocha.Suite, keep: (t: Mocha.Test) => boolean): void {
  suite.tests = suite.tests.filter(keep);
  for (const c of suite.suites) filterTests(c, keep);
}

/** Title of the k-th of n runs of a test (`--repeat`): the first keeps its title, so results still match it. */
export function repeatTitle(title: string, k: number, n: number): string {
  return k === 1 ? title : `${title} (repeat ${k}/${n})`;
}

/** Each test N times in a row (flakiness before a bisect): clones after the original, titled by repeatTitle. */
export function repeatTests(suite: Mocha.Suite, n: number): void {
  const out: Mocha.Test[] = [];
  for (const t of suite.tests) {
    out.push(t);
    for (let k = 2; k <= n; k++) {
      const c = t.clone();
      c.title = repeatTitle(t.title, k, n);
      out.push(c);
    }
  }
  suite.tests = out;
  for (const c of suite.suites) repeatTests(c, n);
}

/** mocha's reading of a --grep string: a regular expression, `/re/flags` allowed. */
export function grepRegExp(s: string): RegExp {
  const m = /^\/(.*)\/([a-z]*)$/.exec(s);
  try {
    return m ? new RegExp(m[1]!, m[2]) : new RegExp(s);
  } catch (e) {
    throw new Error(`--grep ${JSON.stringify(s)} is not a regular expression: ${(e as Error).message}`);
  }
}

/** A regular expression that matches exactly these full titles. */
export function exactTitles(titles: Iterable<string>): string {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  return `^(?:${[...new Set(titles)].map(esc).join('|')})$`;
}

/**
 * The tests of `suites`, listed by a separate `harness run --list --json`
 * process: loading suite files registers them with mocha's globals, which
 * must not happen inside a mocha run that is itself loading files (and ES
 * modules load once per process).
 */
export function listTestsSync(suites: readonly string[], timeoutMs = 60_000): ListedTest[] {
  const out = execFileSync(process.execPath, [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', '--list', '--json', ...suites.flatMap((s) => ['--suite', s])], {
    encoding: 'utf8',
    timeout: scaled(timeoutMs),
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
  });
  const parsed = JSON.parse(out) as unknown;
  if (!Array.isArray(parsed)) throw new Error(`harness run --list --json printed ${out.slice(0, 200)}, not a list`);
  return parsed as ListedTest[];
}
