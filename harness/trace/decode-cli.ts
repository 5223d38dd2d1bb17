/**
 * `harness trace decode FILE [--json] [--formats PATH]`: one record per line
 * (JSON objects with --json), diagnostics on stderr. Exit status: 0 clean,
 * 1 when some line of a known event did not parse, 128 on bad usage or a
 * file that cannot be read (the harness's one exit policy, cli/options.ts).
 */
import { defaultTraceEventsPath, TraceFormats, type FieldValue } from './formats.js';
import { decodedFields } from './flags.js';
import { parseTraceFile, type ParsedLine } from './parse.js';
import { runCommandSpec, str, UsageError, type CommandSpec, type Parsed } from '../cli/options.js';

export const TRACE_DECODE: CommandSpec = {
  name: 'trace decode',
  positionals: ['FILE'],
  summary: "QEMU log-backend trace lines (a machine's trace.log) as records: text for people, one JSON object per line with --json; flags and enums named. Lines that do not parse go to stderr with file and line.",
  options: {
    json: { type: 'boolean', help: 'one JSON object per line' },
    formats: { type: 'string', value: 'PATH', help: "the build's trace-events-all (default: the reference QEMU's)" },
  },
  epilogue: 'exit status: 0 every line decoded, 1 some line of a known event did not parse, 128 bad usage or a file that cannot be read',
};

/** JSON with bigints written as plain numbers (JSON has no size limit; JS does). */
export function recordJson(p: Exclude<ParsedLine, { kind: 'diagnostic' }>): string {
  if (p.kind === 'raw') {
    const o: Record<string, unknown> = { line: p.line, kind: p.reason, raw: p.raw };
    if (p.time) o.time = p.time;
    if (p.event) o.event = p.event;
    return JSON.stringify(o);
  }
  const o: Record<string, unknown> = { line: p.line };
  if (p.time) o.time = p.time;
  o.event = p.event;
  let big = false;
  for (const v of Object.values(p.fields)) if (typeof v === 'bigint') big = true;
  o.fields = p.fields;
  const decoded = decodedFields(p.event, p.fields);
  if (Object.keys(decoded).length) o.decoded = decoded;
  if (!big) return JSON.stringify(o);
  return JSON.stringify(o, (_k, v: unknown) => (typeof v === 'bigint' ? `\u0000big:${v}\u0000` : v)).replace(
    /"\\u0000big:(-?\d+)\\u0000"/g,
    '$1',
  );
}

/** For people: hex where the format printed hex, names after flag and enum values. */
function text(p: Exclude<ParsedLine, { kind: 'diagnostic' }>, formats: TraceFormats): string {
  const t = p.time ? `${p.time} ` : '';
  if (p.kind === 'raw') return `${p.line}: ${t}[${p.reason}] ${p.raw}`;
  const kinds = formats.matcher(p.event)?.kinds ?? [];
  const show = (v: FieldValue, i: number): string =>
    typeof v === 'string' ? JSON.stringify(v) : kinds[i] === 'hex' || kinds[i] === 'ptr' ? `0x${v.toString(16)}` : String(v);
  const decoded = decodedFields(p.event, p.fields);
  const fields = Object.entries(p.fields).map(([k, v], i) => {
    const d = decoded[k];
    return d === undefined ? `${k}=${show(v, i)}` : `${k}=${show(v, i)}(${Array.isArray(d) ? d.join('|') || 'none' : d})`;
  });
  return `${p.line}: ${t}${p.event} ${fields.join(' ')}`;
}

export interface DecodeIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

export function traceDecode(argv: string[], io: DecodeIo = process): Promise<number> {
  return runCommandSpec(TRACE_DECODE, argv, decode, io);
}

async function decode({ values, positionals }: Parsed, io: DecodeIo): Promise<number> {
  const { stdout, stderr } = io;
  const file = positionals[0]!;
  const json = values.json === true;
  const formatsPath = str(values, 'formats');
  const fp = formatsPath ?? defaultTraceEventsPath();
  let formats: TraceFormats;
  try {
    formats = await TraceFormats.load(fp);
  } catch (e) {
    throw new UsageError(`${(e as Error).message}${formatsPath ? '' : ' (install the reference QEMU: scripts/install-qemu.sh, or pass --formats)'}`, false);
  }
  let out: string[] = [];
  let diagnostics = 0;
  const flush = async (): Promise<void> => {
    if (out.length === 0) return;
    const chunk = out.join('\n') + '\n';
    out = [];
    if (!stdout.write(chunk)) await new Promise((r) => stdout.once('drain', r));
  };
  let pending: Promise<void> = Promise.resolve();
  try {
    await parseTraceFile(file, formats, (p) => {
      if (p.kind === 'diagnostic') {
        diagnostics++;
        stderr.write(`${file}:${p.line}: ${p.message}\n  ${p.raw}\n`);
        return;
      }
      out.push(json ? recordJson(p) : text(p, formats));
      if (out.length >= 4096) pending = pending.then(flush);
    });
  } catch (e) {
    throw new UsageError(`${file}: ${(e as Error).message}`, false);
  }
  await pending;
  await flush();
  return diagnostics > 0 ? 1 : 0;
}
