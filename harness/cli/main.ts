/**
 * `harness <command>`: the dispatcher. Each command lives in its own module
 * and parses its own options through ./options.ts (one parser, one exit
 * policy); this module only picks the command, so nothing imports it back.
 */
import { EXIT, type Io } from './options.js';

interface CommandEntry {
  words: string[];
  summary: string;
  load: () => Promise<(argv: string[], io?: Io) => Promise<number>>;
}

const COMMANDS: CommandEntry[] = [
  {
    words: ['run'],
    summary: "run the harness's suites; exit 0 passed, 1 a test failed, 125 cannot test this QEMU, 128 bad usage",
    load: async () => (await import('./run.js')).runCommand,
  },
  { words: ['qemu', 'info'], summary: 'the QEMU in use: binary, version, vIOMMU properties and their names', load: async () => (await import('./qemu-info.js')).qemuInfoCommand },
  { words: ['trace', 'decode'], summary: 'QEMU log-backend trace lines as records', load: async () => (await import('../trace/decode-cli.js')).traceDecode },
  { words: ['doctor'], summary: 'what this host offers the scenario suites, and each prerequisite with its reason', load: async () => (await import('./doctor.js')).doctorCommand },
  { words: ['repro'], summary: 'reproducers of the defects the harness found in QEMU or the kernel', load: async () => (await import('./repro.js')).reproCommand },
  { words: ['report'], summary: "a run folder's HTML report: failures first, per-test iommufd timeline", load: async () => (await import('./report.js')).reportCommand },
];

export const usage = `usage: harness <command> [options]   (harness <command> --help for its options)

commands:
${COMMANDS.map((c) => `  ${c.words.join(' ').padEnd(13)} ${c.summary}`).join('\n')}

exit status 128 means bad usage everywhere (it stops git bisect run).`;

export async function runCli(argv: string[], io: Io = process): Promise<number> {
  const cmd = COMMANDS.find((c) => c.words.every((w, i) => argv[i] === w));
  if (cmd) return (await cmd.load())(argv.slice(cmd.words.length), io);
  if (argv.length === 1 && ['-h', '--help', 'help'].includes(argv[0]!)) {
    io.stdout.write(`${usage}\n`);
    return EXIT.ok;
  }
  if (argv[0] === 'help' && argv.length > 1) return runCli([...argv.slice(1), '--help'], io);
  const what = argv.length ? `unknown command ${JSON.stringify(argv.join(' '))}` : 'no command given';
  io.stderr.write(`harness: ${what}\n\n${usage}\n`);
  return EXIT.usage;
}
