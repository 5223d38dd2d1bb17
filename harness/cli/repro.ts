/**
 * `harness repro NAME`: reruns one defect or surprise the harness found in
 * QEMU or the kernel and prints what a QEMU developer needs: the QEMU binary
 * and version, its command line, what was done, expected and seen.
 *
 * Exit status: 0 the defect is still present, 1 it did not reproduce (fixed?),
 * 125 it could not be tried (no usable QEMU, QEMU did not start), 128 bad
 * usage. 0 for "present" lets `git bisect run` find the commit that fixed it:
 *   git bisect start --term-old=present --term-new=fixed FIXED PRESENT
 *   git bisect run harness repro NAME --qemu build/qemu-system-x86_64
 */
import { join } from 'node:path';
import { ARCHES, type Arch } from '../qemu/binary.js';
import { findReproducer, REPRODUCERS, type ReproOutcome } from '../repro/index.js';
import { runArtifactsDir } from '../util/paths.js';
import { EXIT, runCommandSpec, str, UsageError, type CommandSpec, type Io, type Parsed } from './options.js';

export const REPRO: CommandSpec = {
  name: 'repro',
  positionals: ['NAME'],
  minPositionals: 0,
  summary: `Reproduces one defect the harness found in QEMU or the kernel and says whether this QEMU still has it. Known: ${REPRODUCERS.map((r) => r.name).join(', ')}.`,
  options: {
    list: { type: 'boolean', help: 'the reproducers, one line each' },
    json: { type: 'boolean', help: 'the outcome (or the list) as JSON' },
    arch: { type: 'string', value: 'x86_64|aarch64', help: 'which QEMU system emulator (default x86_64)' },
    qemu: { type: 'string', value: 'PATH', help: 'this QEMU binary instead of the one the harness finds' },
  },
  epilogue: `exit status: 0 still present, 1 did not reproduce (fixed?), 125 could not be tried, 128 bad usage
(0 = present so that git bisect run finds the fixing commit:
   git bisect start --term-old=present --term-new=fixed FIXED PRESENT)`,
};

export function reproCommand(args: string[], io: Io = process): Promise<number> {
  return runCommandSpec(REPRO, args, repro, io);
}

export function formatOutcome(name: string, o: ReproOutcome): string {
  return [
    `repro ${name}: ${findReproducer(name)?.summary ?? ''}`,
    `QEMU:      ${o.qemu.path}`,
    `version:   ${o.qemu.version}`,
    `command:   ${o.cmdline}`,
    'steps:',
    ...o.steps.map((s, i) => `  ${i + 1}. ${s}`),
    `expected:  ${o.expected}`,
    `seen:      ${o.seen}`,
    ...(o.control ? [`control:   ${o.control}`] : []),
    `artifacts: ${o.artifactsDir}`,
    o.present ? `verdict:   STILL PRESENT in this QEMU (exit ${EXIT.ok})` : `verdict:   did not reproduce: fixed in this QEMU? (exit ${EXIT.failed})`,
    '',
  ].join('\n');
}

async function repro({ values, positionals }: Parsed, io: Io): Promise<number> {
  if (values.list) {
    if (positionals.length) throw new UsageError(`--list takes no NAME (got ${JSON.stringify(positionals[0])})`);
    if (values.json) io.stdout.write(`${JSON.stringify(REPRODUCERS.map(({ name, summary, found }) => ({ name, summary, found })), null, 2)}\n`);
    else for (const r of REPRODUCERS) io.stdout.write(`${r.name.padEnd(24)} ${r.summary}\n${''.padEnd(24)} found: ${r.found}\n`);
    return EXIT.ok;
  }
  const name = positionals[0];
  if (!name) throw new UsageError(`missing NAME (one of ${REPRODUCERS.map((r) => r.name).join(', ')}; --list)`);
  const r = findReproducer(name);
  if (!r) throw new UsageError(`no reproducer ${JSON.stringify(name)} (known: ${REPRODUCERS.map((x) => x.name).join(', ')})`);
  const arch = (str(values, 'arch') ?? 'x86_64') as Arch;
  if (!ARCHES.includes(arch)) throw new UsageError(`--arch must be one of ${ARCHES.join(', ')}, not ${arch}`);
  const qemuPath = str(values, 'qemu');
  let outcome: ReproOutcome;
  try {
    outcome = await r.run({ arch, ...(qemuPath ? { qemuPath } : {}), artifactsDir: join(runArtifactsDir(), 'repro', r.name) });
  } catch (e) {
    io.stderr.write(`harness repro ${name}: could not be tried: ${(e as Error).message}\n(exit ${EXIT.untestable})\n`);
    return EXIT.untestable;
  }
  io.stdout.write(values.json ? `${JSON.stringify({ name, ...outcome }, null, 2)}\n` : formatOutcome(name, outcome));
  return outcome.present ? EXIT.ok : EXIT.failed;
}
