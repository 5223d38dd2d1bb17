/**
 * `harness <command>`: the dispatcher. Each command lives in its own module
 * and parses its own options through ./options.ts (one parser, one exit
 * policy); this module only picks the command, so nothing imports it back.
 */
import { EXIT, type CommandSpec, type Io } from './options.js';

interface Command {
  run: (argv: string[], io?: Io) => Promise<number>;
  spec: CommandSpec;
}

interface CommandEntry {
  words: string[];
  summary: string;
  load: () => Promise<Command>;
}

const COMMANDS: CommandEntry[] = [
  {
    words: ['run'],
    summary: "run the harness's suites; exit 0 passed, 1 a test failed, 125 cannot test this QEMU, 128 bad usage",
    load: async () => ((m) => ({ run: m.runCommand, spec: m.RUN }))(await import('./run.js')),
  },
  {
    words: ['qemu', 'info'],
    summary: 'the QEMU in use: binary, version, vIOMMU properties and their names',
    load: async () => ((m) => ({ run: m.qemuInfoCommand, spec: m.QEMU_INFO }))(await import('./qemu-info.js')),
  },
  {
    words: ['trace', 'decode'],
    summary: 'QEMU log-backend trace lines as records',
    load: async () => ((m) => ({ run: m.traceDecode, spec: m.TRACE_DECODE }))(await import('../trace/decode-cli.js')),
  },
  {
    words: ['doctor'],
    summary: 'what this host offers the scenario suites, and each prerequisite with its reason',
    load: async () => ((m) => ({ run: m.doctorCommand, spec: m.DOCTOR }))(await import('./doctor.js')),
  },
  {
    words: ['repro'],
    summary: 'reproducers of the defects the harness found in QEMU or the kernel',
    load: async () => ((m) => ({ run: m.reproCommand, spec: m.REPRO }))(await import('./repro.js')),
  },
  {
    words: ['report'],
    summary: "a run folder's HTML report: failures first, per-test iommufd timeline",
    load: async () => ((m) => ({ run: m.reportCommand, spec: m.REPORT }))(await import('./report.js')),
  },
];

/** Every command's spec (its --help), for the README check and the CLI tests. */
export async function commandSpecs(): Promise<Array<{ words: string[]; spec: CommandSpec }>> {
  return Promise.all(COMMANDS.map(async (c) => ({ words: c.words, spec: (await c.load()).spec })));
}

export const usage = `usage: harness <command> [options]   (harness <command> --help for its options)

commands:
${COMMANDS.map((c) => `  ${c.words.join(' ').padEnd(13)} ${c.summary}`).join('\n')}

exit status 128 means bad usage everywhere (it stops git bisect run).`;

export async function runCli(argv: string[], io: Io = process): Promise<number> {
  const cmd = COMMANDS.find((c) => c.words.every((w, i) => argv[i] === w));
  if (cmd) return (await cmd.load()).run(argv.slice(cmd.words.length), io);
  if (argv.length === 1 && ['-h', '--help', 'help'].includes(argv[0]!)) {
    io.stdout.write(`${usage}\n`);
    return EXIT.ok;
  }
  if (argv[0] === 'help' && argv.length > 1) return runCli([...argv.slice(1), '--help'], io);
  const what = argv.length ? `unknown command ${JSON.stringify(argv.join(' '))}` : 'no command given';
  io.stderr.write(`harness: ${what}\n\n${usage}\n`);
  return EXIT.usage;
}
