/**
 * `harness report [RUN_DIR]`: the HTML report of a run folder (default
 * artifacts/latest), with each test's model.json and failure.txt; prints the
 * page's path. Opens from disk: no server, nothing fetched.
 */
import { existsSync, realpathSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { buildRunReport } from '../report/html/index.js';
import { artifactsRoot } from '../util/paths.js';
import { EXIT, runCommandSpec, str, UsageError, type CommandSpec, type Io, type Parsed } from './options.js';

export const REPORT: CommandSpec = {
  name: 'report',
  positionals: ['RUN_DIR'],
  minPositionals: 0,
  summary:
    "Builds RUN_DIR/report.html (default: $HARNESS_ARTIFACTS/latest, else artifacts/latest): the run's summary, failures first, and per test a timeline of QMP, QEMU's iommufd trace, the kernel's answers and stderr on one wall clock (the console, which has no wall-clock time, apart), with the oracle's flags beside each request, L1's tests of a virtual-lab run included. Writes each test's model.json and failure.txt beside its artifacts.",
  options: {
    'trace-events': { type: 'string', value: 'FILE', help: "parse traces with this trace-events-all (default: the binary's own, else the reference's)" },
  },
  epilogue: `exit status:
  0    the report was written (whatever the run's tests did)
  1    the folder could not be read
  128  bad usage: unknown option, stray argument, RUN_DIR not a folder`,
};

export function reportCommand(args: string[], io: Io = process): Promise<number> {
  return runCommandSpec(REPORT, args, report, io);
}

function report({ values, positionals }: Parsed, io: Io): number {
  const named = resolve(positionals[0] ?? join(artifactsRoot(), 'latest'));
  if (!existsSync(named)) throw new UsageError(`run folder ${named} does not exist${positionals[0] ? '' : ' (no run yet?)'}`, false);
  // latest is a link: the page is named after, and links from, the run's own folder.
  const dir = realpathSync(named);
  const traceEvents = str(values, 'trace-events');
  if (traceEvents && !existsSync(traceEvents)) throw new UsageError(`--trace-events ${traceEvents}: no such file`, false);
  const { path, run } = buildRunReport(dir, traceEvents ? { traceEvents: () => resolve(traceEvents) } : {});
  const n = (s: string) => run.results.filter((r) => r.state === s).length;
  io.stdout.write(`${path}\n`);
  io.stderr.write(`harness report: ${n('passed')} passed, ${n('failed')} failed, ${n('skipped')} skipped in ${dir}\n`);
  return EXIT.ok;
}
