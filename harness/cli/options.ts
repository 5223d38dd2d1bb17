/**
 * One option parser and one exit policy for every command of the harness
 * (`harness run`, `qemu info`, `trace decode`, `doctor`, `repro`, and the
 * stand-alone vfio-user server): node:util parseArgs in strict mode, with
 *
 *   --help / -h   prints the command's help on stdout, exit 0
 *   a usage error (unknown option, stray argument, missing or bad value)
 *                 names the problem and the usage on stderr, exit 128
 *   any other error from the command: its message on stderr, exit 1
 *
 * 128 is what `git bisect run` treats as "stop the bisection": a mistyped
 * option must never mark a commit good, bad or untestable.
 */
import { parseArgs } from 'node:util';

/** Exit statuses shared by every command; `harness run` adds the bisect meanings. */
export const EXIT = {
  /** Every test that ran passed / the command did what was asked. */
  ok: 0,
  /** A test failed / the command's operation failed. */
  failed: 1,
  /** This commit cannot be tested (no usable QEMU): `git bisect run` skips it. */
  untestable: 125,
  /** Bad usage or bad input to the harness itself: stops `git bisect run`. */
  usage: 128,
} as const;

/**
 * Bad usage, or bad input to the harness (a profile that does not parse, a
 * QEMU path that does not exist): the message names the option, argument or
 * field; exit 128. Bad input does not repeat the usage line.
 */
export class UsageError extends Error {
  override name = 'UsageError';
  constructor(
    message: string,
    readonly showUsage = true,
  ) {
    super(message);
  }
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  /** May be given more than once (values collect, in order). */
  multiple?: boolean;
  short?: string;
  /** The value's placeholder in the help, e.g. PATH. */
  value?: string;
  help: string;
}

export interface CommandSpec {
  /** As typed: "run", "qemu info", ... */
  name: string;
  /** Placeholders of the positional arguments, e.g. ['FILE']; a trailing '...' takes any number. */
  positionals?: string[];
  /** How many positionals are required (default: all named, none for '...'). */
  minPositionals?: number;
  summary: string;
  options: Record<string, OptionSpec>;
  /** Paragraphs after the options (exit statuses, environment). */
  epilogue?: string;
}

export interface Io {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

export interface Parsed {
  values: Values;
  positionals: string[];
}

const prog = (spec: CommandSpec): string => (spec.name.startsWith('vfio-user') ? spec.name : `harness ${spec.name}`);

/** The synopsis, wrapped at 100 columns (optional positionals in brackets). */
export function usageLine(spec: CommandSpec): string {
  const names = spec.positionals ?? [];
  const min = spec.minPositionals ?? names.length;
  const words = [
    ...names.map((n, i) => (i < min ? n : `[${n}]`)),
    ...Object.entries(spec.options).map(([n, o]) => `[--${n}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}]${o.multiple ? '...' : ''}`),
  ];
  const head = `usage: ${prog(spec)}`;
  const lines = [head];
  for (const w of words) {
    if (lines.at(-1)!.length + 1 + w.length > 100) lines.push(''.padEnd(head.length));
    lines[lines.length - 1] += ` ${w}`;
  }
  return lines.join('\n');
}

/** Words of `text` in lines of at most `width` columns, continuation lines indented by `indent`. */
function wrap(text: string, width: number, indent = 0): string {
  const lines = [''];
  for (const w of text.split(/\s+/)) {
    if (lines.at(-1)!.trim() && lines.at(-1)!.length + 1 + w.length > width) lines.push(''.padEnd(indent));
    lines[lines.length - 1] += lines.at(-1)!.trim() ? ` ${w}` : w;
  }
  return lines.join('\n');
}

export function helpText(spec: CommandSpec): string {
  const rows = Object.entries(spec.options).map(([n, o]) => [`${o.short ? `-${o.short}, ` : ''}--${n}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}`, o.help + (o.multiple ? ' (repeatable)' : '')] as const);
  rows.push(['-h, --help', 'this help']);
  const w = Math.max(...rows.map(([l]) => l.length));
  const lines = [usageLine(spec), '', wrap(spec.summary, 100), '', 'options:', ...rows.map(([l, h]) => `  ${l.padEnd(w)}  ${wrap(h, 100 - w - 4, w + 4)}`)];
  if (spec.epilogue) lines.push('', spec.epilogue);
  return `${lines.join('\n')}\n`;
}

/** parseArgs' messages, shortened to name the option or argument. */
function usageMessage(e: Error & { code?: string }): string {
  const opt = /'(-[^' ]+)/.exec(e.message)?.[1];
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${opt ?? e.message}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return /argument missing|ambiguous/.test(e.message) ? `option ${opt} needs a value` : `option ${opt} takes no value`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${e.message.match(/'([^']*)'/)?.[1] ?? ''}`;
    default:
      return e.message;
  }
}

/** Parses `argv` for `spec`; throws UsageError naming what is wrong. `--help` is returned as values.help. */
export function parseCommand(spec: CommandSpec, argv: string[]): Parsed {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const [n, o] of Object.entries(spec.options)) options[n] = { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short ? { short: o.short } : {}) };
  let r: { values: Values; positionals: string[] };
  try {
    r = parseArgs({ args: argv, options, strict: true, allowPositionals: true }) as typeof r;
  } catch (e) {
    throw new UsageError(usageMessage(e as Error & { code?: string }));
  }
  if (r.values.help) return r;
  const names = spec.positionals ?? [];
  const variadic = names.at(-1)?.endsWith('...') ?? false;
  const min = spec.minPositionals ?? (variadic ? 0 : names.length);
  if (!variadic && r.positionals.length > names.length) {
    const stray = r.positionals.slice(names.length);
    throw new UsageError(`unexpected argument${stray.length > 1 ? 's' : ''} ${stray.map((s) => JSON.stringify(s)).join(' ')}`);
  }
  if (r.positionals.length < min) throw new UsageError(`missing ${names.slice(r.positionals.length, min).join(' ')}`);
  return r;
}

/** The last value of a string option (a repeated single-valued option: the last one wins). */
export function str(v: Values, name: string): string | undefined {
  const x = v[name];
  return Array.isArray(x) ? (x.at(-1) as string | undefined) : typeof x === 'string' ? x : undefined;
}

/** Every value of a repeatable string option. */
export function strs(v: Values, name: string): string[] {
  const x = v[name];
  return Array.isArray(x) ? (x as string[]) : typeof x === 'string' ? [x] : [];
}

/**
 * Runs one command under the shared policy: parse, --help, then `body`.
 * `body` returns the exit status; a UsageError it throws is 128 with the
 * usage, any other error 1 with its message.
 */
export async function runCommandSpec(spec: CommandSpec, argv: string[], body: (p: Parsed, io: Io) => Promise<number> | number, io: Io = process): Promise<number> {
  let p: Parsed;
  try {
    p = parseCommand(spec, argv);
  } catch (e) {
    return usageFailure(spec, e as Error, io);
  }
  if (p.values.help) {
    io.stdout.write(helpText(spec));
    return EXIT.ok;
  }
  try {
    return await body(p, io);
  } catch (e) {
    if (e instanceof UsageError) return usageFailure(spec, e, io);
    io.stderr.write(`${prog(spec)}: ${(e as Error).message}\n`);
    return EXIT.failed;
  }
}

function usageFailure(spec: CommandSpec, e: Error, io: Io): number {
  const usage = e instanceof UsageError && !e.showUsage ? '' : `${usageLine(spec)}\n(exit ${EXIT.usage}: bad usage; \`${prog(spec)} --help\` says more)\n`;
  io.stderr.write(`${prog(spec)}: ${e.message}\n${usage}`);
  return EXIT.usage;
}
