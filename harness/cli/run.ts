/**
 * `harness run`: the harness's suites with its reporter, and an exit status
 * `git bisect run` can act on:
 *
 *   0    every test that ran passed
 *   1    a test failed
 *   125  this commit cannot be tested: a named QEMU exists but does not run
 *        as QEMU (a broken build), or nothing could run (every test skipped,
 *        or every QEMU-needing test skipped for want of a usable QEMU)
 *   128  bad usage or bad input (unknown option or suite, a QEMU path that
 *        does not exist or is not executable, a bad profile, a --grep that
 *        matches nothing, a test file that does not load, a report path
 *        that cannot be written): stops the bisection instead of blaming a commit
 *   130  interrupted by SIGINT (143 by SIGTERM): harness/testing/run-interrupts.ts
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import Mocha from 'mocha';
import HarnessReporter, { streamResultsTo } from '../report/mocha-reporter.js';
import type { TestResult } from '../report/junit.js';
import { NO_QEMU_SKIP, runExitStatus, type RunCounts } from '../report/outcome.js';
import { loadProfile, profileFromEnv, resolveProfilePath } from '../host/profile.js';
import { replayVfioJournal } from '../host/vfio-bind.js';
import { l2QemuVar } from '../lab/l2.js';
import { SOAK_SUITE } from '../lab/soak.js';
import { needsSoakNodeFlags, rerunWithSoakNodeFlags } from './soak-node.js';
import { LabHost } from '../lab/lab-host.js';
import { ARCHES, envVarsFor, findQemu, qemuVersion, QemuNotFoundError, type Arch } from '../qemu/binary.js';
import {
  collectTests,
  filterTests,
  fullTitle,
  grepRegExp,
  repeatTests,
  resultKey,
  SUITES,
  suiteFiles,
  testKey,
  type ListedTest,
} from '../testing/test-list.js';
import { planJobs, runJobs } from '../testing/jobs.js';
import { superviseInterrupts } from '../testing/run-interrupts.js';
import { startRunFiles } from '../report/run-files.js';
import { startWatch, type WatchServer } from '../report/watch.js';
import { interruptExitCode, interruption } from '../util/interrupt.js';
import { artifactsRoot, runArtifactsDir } from '../util/paths.js';
import { confineTmpdir } from '../util/run-tmp.js';
import { parseReporter, REPORTER_ENV, REPORTERS } from '../report/output.js';
import { parseTimeoutMultiplier, scaleMochaTimeouts, TIMEOUT_MULTIPLIER_ENV, timeoutMultiplier } from '../util/timeouts.js';
import { EXIT, runCommandSpec, str, strs, UsageError, type CommandSpec, type Io, type Parsed } from './options.js';

export { SUITES } from '../testing/test-list.js';

export const RUN: CommandSpec = {
  name: 'run',
  summary: "Runs the harness's suites (qemu, guest, virtual-lab, lab; all by default) against the QEMU it finds: an option, then $QEMU_X86_64 / $QEMU_AARCH64 (or $QEMU), then the host profile's qemu paths, then the reference QEMU.",
  options: {
    suite: { type: 'string', multiple: true, value: 'NAME', help: `a suite to run: ${SUITES.join(', ')}` },
    spec: { type: 'string', multiple: true, value: 'FILE', help: 'a compiled test file to run (instead of or beside --suite)' },
    grep: { type: 'string', value: 'REGEXP', help: "only tests whose full title matches (mocha's --grep); reaches L1's lab tests in the virtual lab" },
    failed: { type: 'boolean', help: "only the tests that failed in the last run (its results.json under $HARNESS_ARTIFACTS/latest)" },
    repeat: { type: 'string', value: 'N', help: 'run each selected test N times in a row (flakiness before a bisect)' },
    jobs: { type: 'string', value: 'N', help: 'the selected test files in N worker processes at once (the lab suite\'s in one: they share devices); artifacts per worker in the run folder' },
    soak: { type: 'string', value: 'N', help: "the soak suite: the lab's hot-plug scenario N times on one L2, leak figures printed (in the virtual lab; on the host with --profile)" },
    list: { type: 'boolean', help: 'print the tests a run would execute (with L1\'s under the virtual-lab suite) and exit' },
    json: { type: 'boolean', help: 'with --list: JSON objects {file, path, title}' },
    junit: { type: 'string', value: 'PATH', help: 'JUnit XML here (default $HARNESS_JUNIT, else artifacts/junit.xml)' },
    profile: { type: 'string', value: 'NAME|PATH', help: 'host profile for the lab suites (default $HARNESS_HOST_PROFILE)' },
    'qemu-x86_64': { type: 'string', value: 'PATH', help: 'the QEMU for x86_64 (sets $QEMU_X86_64 for every layer)' },
    'qemu-aarch64': { type: 'string', value: 'PATH', help: 'the QEMU for aarch64 (sets $QEMU_AARCH64)' },
    'l2-qemu-x86_64': { type: 'string', value: 'PATH', help: "the QEMU the lab suites run as L2 for x86_64 (sets $HARNESS_L2_QEMU_X86_64; default: L0's)" },
    'l2-qemu-aarch64': { type: 'string', value: 'PATH', help: 'the same for aarch64 (sets $HARNESS_L2_QEMU_AARCH64)' },
    reporter: { type: 'string', value: 'NAME', help: `what the run prints as it goes: ${REPORTERS.join(', ')} (spec with GitHub Actions annotations for failures); default spec (sets $HARNESS_REPORTER)` },
    'timeout-multiplier': { type: 'string', value: 'X', help: 'scale every deadline by X (1 to 100): test timeouts, QEMU, QMP, agent and helper waits, in L1 too (sets $HARNESS_TIMEOUT_MULTIPLIER)' },
    watch: {
      type: 'boolean',
      help: "serve the run's report live on 127.0.0.1 while it runs, at a URL with a random token (printed at start): the page reloads as results arrive; <URL>machines lists the running QEMUs, ws <URL>qmp/<pid> attaches to one's QMP (query-* commands and events only)",
    },
    'watch-write': { type: 'boolean', help: 'with --watch: the QMP bridge passes every command (stop, quit, device_del...), not only query-*' },
    'watch-port': { type: 'string', value: 'PORT', help: 'with --watch: this port instead of a free one' },
  },
  epilogue: `exit status (for git bisect run):
  0    every test that ran passed
  1    a test failed
  125  cannot test this commit: a named QEMU exists but does not run as QEMU,
       every test skipped, or every QEMU-needing test skipped for want of a QEMU
  128  bad usage or input: unknown option, suite or stray argument, a QEMU path
       that does not exist or is not executable, a bad profile, a --grep (or
       --failed) that selects nothing, a test file that does not load, a JUnit
       or artifacts path that cannot be written
  130  interrupted by SIGINT (143: SIGTERM): the running test failed as
       interrupted, QEMUs stopped, the JUnit says so; a second signal ends it at once`,
};

export function runCommand(args: string[], io: Io = process): Promise<number> {
  return runCommandSpec(RUN, args, run, io);
}

/**
 * Every QEMU this run was told to use, checked before any test: a path that
 * does not exist or is not executable is bad input (128); one that does not
 * answer --version like QEMU is a broken build (125). Returns the arches
 * that have a usable QEMU, and the reason for those that have none.
 */
async function checkQemus(origins: Map<string, string>): Promise<{ usable: Arch[]; broken?: string; missing: string[] }> {
  const usable: Arch[] = [];
  const missing: string[] = [];
  for (const arch of ARCHES) {
    // What the user named for L0 (findQemu's rule: $QEMU only when its name says this arch), and for L2.
    const named = envVarsFor(arch)
      .map((v) => [v, process.env[v]] as const)
      .find(([v, p]) => p && (v !== 'QEMU' || p.endsWith(`qemu-system-${arch}`)));
    const wanted: Array<{ origin: string; path?: string; l2: boolean }> = [
      named ? { origin: origins.get(named[0]) ?? `$${named[0]}`, path: named[1]!, l2: false } : { origin: 'the reference QEMU', l2: false },
      ...(process.env[l2QemuVar(arch)] ? [{ origin: origins.get(l2QemuVar(arch)) ?? `$${l2QemuVar(arch)}`, path: process.env[l2QemuVar(arch)]!, l2: true }] : []),
    ];
    for (const w of wanted) {
      let bin;
      try {
        bin = w.path ? findQemu(arch, { path: w.path, origin: w.origin }) : findQemu(arch);
      } catch (e) {
        if (!(e instanceof QemuNotFoundError)) throw e;
        // No reference QEMU installed is no usage error: its tests skip, and the exit status says so.
        if (!w.path) {
          missing.push(e.message);
          continue;
        }
        throw new UsageError(e.message, false);
      }
      try {
        await qemuVersion(bin);
        if (!w.l2) usable.push(arch);
      } catch (e) {
        if (!w.path) {
          missing.push(`the reference QEMU for ${arch}: ${(e as Error).message}`);
          continue;
        }
        return { usable, missing, broken: `the ${w.l2 ? 'L2 ' : ''}QEMU for ${arch} (${w.origin}) does not run: ${(e as Error).message}` };
      }
    }
  }
  return { usable, missing };
}

/** The failed tests of the last run, by the reporter's key; hook failures select their whole suite. */
function lastFailures(): { tests: Set<string>; suites: Set<string>; file: string } {
  const file = join(artifactsRoot(), 'latest', 'results.json');
  let results: TestResult[];
  try {
    results = JSON.parse(readFileSync(file, 'utf8')) as TestResult[];
  } catch (e) {
    throw new UsageError(`--failed: cannot read the last run's results ${file}: ${(e as Error).message}`, false);
  }
  const tests = new Set<string>();
  const suites = new Set<string>();
  for (const r of results.filter((x) => x.state === 'failed')) {
    if (/^"(before|after) (all|each)" hook/.test(r.title)) suites.add(r.suite);
    else tests.add(resultKey(r));
  }
  if (!tests.size && !suites.size) throw new UsageError(`--failed: the last run (${file}) has no failed test`, false);
  return { tests, suites, file };
}

async function run({ values }: Parsed, io: Io): Promise<number> {
  const list = values.list === true;
  if (values.json && !list) throw new UsageError('--json goes with --list');
  const repeatText = str(values, 'repeat');
  const repeat = repeatText === undefined ? 1 : Number(repeatText);
  if (!Number.isInteger(repeat) || repeat < 1) throw new UsageError(`--repeat wants a whole number of at least 1, not ${JSON.stringify(repeatText)}`);
  const jobsText = str(values, 'jobs');
  const jobs = jobsText === undefined ? 1 : Number(jobsText);
  if (!Number.isInteger(jobs) || jobs < 1) throw new UsageError(`--jobs wants a whole number of at least 1, not ${JSON.stringify(jobsText)}`);
  const watchPort = watchPortOption(values, list, jobs);
  const soakText = str(values, 'soak');
  if (soakText !== undefined) {
    const n = Number(soakText);
    if (!Number.isInteger(n) || n < 2) throw new UsageError(`--soak wants a whole number of cycles, at least 2, not ${JSON.stringify(soakText)}`);
    process.env.HARNESS_SOAK_CYCLES = String(n);
  }
  // --soak alone: the soak suite, in the virtual lab (on a lab host given by --profile, there).
  const soakOnly = soakText !== undefined && !strs(values, 'suite').length && !strs(values, 'spec').length;
  const suites = soakOnly ? [str(values, 'profile') ? 'lab' : 'virtual-lab'] : strs(values, 'suite');
  for (const s of suites) if (!(SUITES as readonly string[]).includes(s)) throw new UsageError(`unknown suite ${JSON.stringify(s)} (known: ${SUITES.join(', ')})`);
  const specs = strs(values, 'spec').map((f) => (isAbsolute(f) ? f : resolve(f)));
  // SOAK_SUITE has no regular-expression metacharacters: as a grep it matches itself.
  const grep = str(values, 'grep') ?? (soakText !== undefined ? SOAK_SUITE : undefined);
  let grepRe: RegExp | undefined;
  try {
    grepRe = grep === undefined ? undefined : grepRegExp(grep);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }

  // The binary choice reaches every layer (and the virtual lab's L1) through
  // the environment: an option wins over the environment, which wins over the
  // host profile's qemu paths; the reference QEMU comes last.
  const profileName = str(values, 'profile');
  let profile;
  try {
    if (profileName) process.env.HARNESS_HOST_PROFILE = resolveProfilePath(profileName);
    profile = profileFromEnv() ? loadProfile(profileFromEnv()!) : undefined;
  } catch (e) {
    throw new UsageError((e as Error).message, false);
  }
  // The lab suite's files load when it is named, or when neither a suite nor a spec is (every suite).
  const runsLab = suites.length ? suites.includes('lab') : !specs.length;
  if (!list && needsSoakNodeFlags({ runsLab, labUnavailable: LabHost.unavailableReason() })) return rerunWithSoakNodeFlags(process.argv.slice(2));
  const origins = new Map<string, string>();
  for (const arch of ARCHES) {
    const v = `QEMU_${arch.toUpperCase()}`;
    const opt = str(values, `qemu-${arch}`);
    const fromEnv = process.env[v];
    const p = opt ?? fromEnv ?? profile?.qemu[arch];
    if (p) process.env[v] = p;
    if (opt) origins.set(v, `--qemu-${arch}`);
    else if (!fromEnv && p) origins.set(v, `host profile ${profile!.name} (qemu.${arch})`);
    const l2 = str(values, `l2-qemu-${arch}`);
    if (l2) {
      process.env[l2QemuVar(arch)] = l2;
      origins.set(l2QemuVar(arch), `--l2-qemu-${arch}`);
    }
  }
  if (str(values, 'junit')) process.env.HARNESS_JUNIT = str(values, 'junit');
  if (repeat > 1) process.env.HARNESS_REPEAT = String(repeat);
  const reporter = str(values, 'reporter');
  try {
    if (reporter !== undefined) process.env[REPORTER_ENV] = parseReporter(reporter, '--reporter');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const multiplier = str(values, 'timeout-multiplier');
  try {
    if (multiplier !== undefined) process.env[TIMEOUT_MULTIPLIER_ENV] = String(parseTimeoutMultiplier(multiplier, '--timeout-multiplier'));
    timeoutMultiplier();
  } catch (e) {
    throw new UsageError((e as Error).message, multiplier !== undefined);
  }
  // Before any file loads: mocha sets each test's timeout as the file registers it.
  scaleMochaTimeouts(Mocha.Runnable);

  // Before any file loads: what the tests (and what they start) make in os.tmpdir() goes with the run,
  // and the run folders a killed run left go first (runTmpDir sweeps them as it makes this run's).
  confineTmpdir();
  const mocha = new Mocha({ reporter: HarnessReporter, timeout: 120_000, slow: 5_000 });
  const files = [...(suites.length || !specs.length ? suiteFiles(suites.length ? suites : SUITES) : []), ...specs];
  for (const f of files) mocha.addFile(f);
  try {
    await mocha.loadFilesAsync();
  } catch (e) {
    // A suite file that does not load is the harness's fault, never a verdict on QEMU: stop a bisection.
    throw new UsageError(`a test file does not load: ${(e as Error).stack ?? (e as Error).message}`, false);
  }

  const all = collectTests(mocha.suite);
  const failures = values.failed ? lastFailures() : undefined;
  const selected = (_t: Mocha.Test, l: ListedTest): boolean =>
    (!grepRe || grepRe.test(fullTitle(l))) &&
    (!failures || failures.tests.has(testKey(l)) || [...failures.suites].some((s) => testKey(l).startsWith(`${s} › `)));
  const keep = new Set(all.filter(({ test, listed }) => selected(test, listed)).map(({ test }) => test));
  if (!keep.size) {
    const what = [grep !== undefined && `--grep ${JSON.stringify(grep)}`, failures && `the failures of the last run (${failures.file})`].filter(Boolean).join(' and ');
    throw new UsageError(`${what || 'the selection'} matches none of the ${all.length} tests in ${files.length} files (${suites.length ? suites.join(', ') : specs.length ? 'the --spec files' : 'every suite'})`);
  }
  filterTests(mocha.suite, (t) => keep.has(t));
  if (repeat > 1) repeatTests(mocha.suite, repeat);

  if (list) {
    const listed = collectTests(mocha.suite).map((x) => x.listed);
    if (values.json) io.stdout.write(`${JSON.stringify(listed)}\n`);
    else {
      for (const l of listed) io.stdout.write(`${testKey(l)}\n`);
      io.stdout.write(`${listed.length} tests\n`);
    }
    return EXIT.ok;
  }

  // This run's latest link and a JUnit that fails until the run writes its own, before any test:
  // a report path that cannot be written stops the run here, and no older run's verdict stands as this one's.
  try {
    startRunFiles();
  } catch (e) {
    throw new UsageError((e as Error).message, false);
  }
  if (jobs > 1) {
    const plan = planJobs(all.filter(({ test }) => keep.has(test)).map((x) => x.listed), jobs);
    return runJobs(plan, { repeat, log: (l) => io.stderr.write(`harness run: ${l}\n`), write: (t) => io.stdout.write(t) });
  }
  const qemus = await checkQemus(origins);
  if (qemus.broken) {
    io.stderr.write(`harness run: ${qemus.broken}\n(exit ${EXIT.untestable}: this commit cannot be tested; git bisect run skips it)\n`);
    return EXIT.untestable;
  }
  // Devices a killed run left on vfio-pci go back to their drivers first.
  if (profile) {
    const journal = process.env.HARNESS_VFIO_JOURNAL;
    for (const r of replayVfioJournal(profile, journal ? { journal } : {})) io.stderr.write(`harness run: ${r.ok ? 'gave back' : 'could not give back'} ${r.bdf} (left by a killed run): ${r.detail}\n`);
  }
  const { mochaHooks } = await import('../testing/root-hooks.js');
  mocha.rootHooks(mochaHooks);
  const watch = watchPort === undefined ? undefined : await watchRun(watchPort, values['watch-write'] === true, io);
  const counts: RunCounts = { passed: 0, failed: 0, skipped: 0, noQemuSkips: 0 };
  let supervised = (): void => {};
  await new Promise<void>((resolve) => {
    const runner = mocha.run(() => resolve());
    supervised = superviseInterrupts(runner, (line) => io.stderr.write(`\nharness run: ${line}\n`));
    const { EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING } = Mocha.Runner.constants;
    runner.on(EVENT_TEST_PASS, () => counts.passed++);
    runner.on(EVENT_TEST_FAIL, () => counts.failed++);
    runner.on(EVENT_TEST_PENDING, (t: Mocha.Test & { skipReason?: string }) => {
      counts.skipped++;
      if (NO_QEMU_SKIP.test(t.skipReason ?? '')) counts.noQemuSkips++;
    });
  });
  supervised();
  await watch?.close();
  const stop = interruption();
  if (stop) {
    io.stderr.write(`harness run: interrupted by ${stop.signal} (exit ${interruptExitCode(stop.signal)})\n`);
    return interruptExitCode(stop.signal);
  }
  const status = runExitStatus(counts, qemus.usable.length > 0);
  if (status === EXIT.untestable) {
    const why = counts.passed === 0 ? `no test ran (${counts.skipped} skipped)` : `${counts.noQemuSkips} tests skipped for want of a usable QEMU and no arch has one:\n  ${qemus.missing.join('\n  ')}`;
    io.stderr.write(`harness run: ${why}\n(exit ${EXIT.untestable}: nothing could be tested; git bisect run skips this commit)\n`);
  }
  return status;
}

/** --watch's port (0: a free one), or undefined without --watch; its companions alone are a usage error. */
function watchPortOption(values: Parsed['values'], list: boolean, jobs: number): number | undefined {
  const portText = str(values, 'watch-port');
  if (!values.watch) {
    for (const o of ['watch-write', 'watch-port']) if (values[o] !== undefined) throw new UsageError(`--${o} goes with --watch`);
    return undefined;
  }
  if (list) throw new UsageError('--watch goes with a run, not --list');
  // The workers' results and QEMUs are in processes of their own, which this server cannot see.
  if (jobs > 1) throw new UsageError('--watch serves one process: not with --jobs above 1');
  if (portText === undefined) return 0;
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--watch-port wants a port number from 1 to 65535, not ${JSON.stringify(portText)}`);
  return port;
}

/** Starts the live report server on this run's folder; the results stream to it from this process only. */
async function watchRun(port: number, write: boolean, io: Io): Promise<WatchServer> {
  const resultsJsonl = join(runArtifactsDir(), 'results.jsonl');
  let server: WatchServer;
  try {
    server = await startWatch({ runDir: runArtifactsDir(), resultsJsonl, port, write });
  } catch (e) {
    throw new UsageError(`--watch: cannot serve on 127.0.0.1${port ? `:${port}` : ''}: ${(e as Error).message}`, false);
  }
  const unstream = streamResultsTo(resultsJsonl);
  io.stderr.write(`harness run: watch this run at ${server.url} (QMP ${write ? 'read-write' : 'read-only: query-* commands and events'}; served until the run ends)\n`);
  return {
    ...server,
    close: async () => {
      unstream();
      await server.close();
    },
  };
}
