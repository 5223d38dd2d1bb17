/**
 * What a run prints as it goes, chosen by `harness run --reporter` (or
 * $HARNESS_REPORTER, so `npm test` can choose too): mocha's spec (the
 * default: one line per test, readable in a CI log), dot (one character per
 * test, for long runs), or github (spec, plus a GitHub Actions annotation
 * `::error file=...,line=...::` for each failure, so the failure shows on the
 * line of the test that failed). The harness's own summary, JUnit and report
 * come after any of them (harness/report/mocha-reporter.ts).
 */
import { isAbsolute, relative } from 'node:path';
import Mocha from 'mocha';
import { repoRoot } from '../util/paths.js';

export const REPORTERS = ['spec', 'dot', 'github'] as const;
export type ReporterName = (typeof REPORTERS)[number];
export const REPORTER_ENV = 'HARNESS_REPORTER';

export function parseReporter(name: string, source: string): ReporterName {
  if ((REPORTERS as readonly string[]).includes(name)) return name as ReporterName;
  throw new RangeError(`${source}: unknown reporter ${JSON.stringify(name.slice(0, 40))} (known: ${REPORTERS.join(', ')})`);
}

export function reporterFromEnv(env: NodeJS.ProcessEnv = process.env): ReporterName {
  const v = env[REPORTER_ENV];
  return v ? parseReporter(v, `$${REPORTER_ENV}`) : 'spec';
}

/** Starts the chosen output on `runner` (mocha's reporters register their listeners as they are built). */
export function createOutput(name: ReporterName, runner: Mocha.Runner, options?: Mocha.MochaOptions): void {
  if (name === 'dot') new Mocha.reporters.Dot(runner, options);
  else new Mocha.reporters.Spec(runner, options);
  if (name === 'github') {
    runner.on(Mocha.Runner.constants.EVENT_TEST_FAIL, (t: Mocha.Runnable, err: Error) => {
      process.stdout.write(`${githubAnnotation(t.fullTitle(), err, t.file)}\n`);
    });
  }
}

/** Where in the sources a failure happened: the first stack frame in this checkout's TypeScript (source maps are on). */
export function failureLocation(stack: string | undefined, file?: string, root = repoRoot): { file: string; line?: number } | undefined {
  for (const m of (stack ?? '').matchAll(/(?:\(|at )(?:file:\/\/)?([^\s()]+\.ts):(\d+):\d+\)?$/gm)) {
    const path = isAbsolute(m[1]!) ? relative(root, m[1]!) : m[1]!;
    if (!path.startsWith('..') && !path.includes('node_modules')) return { file: path, line: Number(m[2]) };
  }
  if (!file) return undefined;
  // No frame of ours (a timeout): the test's file, its source rather than dist's JavaScript.
  const rel = relative(root, file);
  return { file: rel.replace(/^dist\//, '').replace(/\.js$/, '.ts') };
}

// GitHub's workflow-command escaping: data loses %, CR, LF; properties also : and ,.
const escapeData = (s: string): string => s.replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
const escapeProperty = (s: string): string => escapeData(s).replace(/:/g, '%3A').replace(/,/g, '%2C');

/** `::error file=F,line=L,title=T::message` for one failed test. */
export function githubAnnotation(title: string, err: Error, file?: string, root = repoRoot): string {
  const at = failureLocation(err.stack, file, root);
  const props = [...(at ? [`file=${escapeProperty(at.file)}`] : []), ...(at?.line ? [`line=${at.line}`] : []), `title=${escapeProperty(title)}`];
  const message = `${err.name && !String(err.message).startsWith(err.name) ? `${err.name}: ` : ''}${err.message}`;
  return `::error ${props.join(',')}::${escapeData(message.length > 4000 ? `${message.slice(0, 4000)}...` : message)}`;
}
