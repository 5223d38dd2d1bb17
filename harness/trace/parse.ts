/**
 * QEMU log-backend lines → typed records. A line is `[prefix]<event> <format
 * expanded>`; the prefix is `-msg timestamp=on`'s ISO-8601 time (or old
 * tracetool's `pid@sec.usec:`). Anything else in the same file (QEMU's own
 * warnings when stderr and the trace share it) becomes a raw record; a known
 * event whose text does not fit its format is a diagnostic, kept out of the
 * model but never dropped. A `%s` argument holding a newline splits its event
 * over two lines: the first may be a diagnostic, the rest comes back raw.
 */
import { createReadStream } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import type { CompiledMatcher, FieldValue, TraceFormats } from './formats.js';

export type { FieldValue } from './formats.js';

interface LineBase {
  /** 1-based line number in the file or stream. */
  line: number;
  /** ISO-8601 UTC time from the line's prefix, as written. */
  time?: string;
  /** The whole line as read (prefix included). */
  raw: string;
}

export interface EventRecord extends LineBase {
  kind: 'event';
  event: string;
  fields: Record<string, FieldValue>;
  /** Thread id from old tracetool's `pid@sec.usec:` prefix. */
  pid?: number;
}

export interface RawRecord extends LineBase {
  kind: 'raw';
  /** `unknown-event`: looks like `name args` but the formats lack the name; `foreign`: not a trace line. */
  reason: 'unknown-event' | 'foreign';
  event?: string;
}

export interface Diagnostic extends LineBase {
  kind: 'diagnostic';
  event: string;
  message: string;
}

export type TraceRecord = EventRecord | RawRecord;
export type ParsedLine = TraceRecord | Diagnostic;

const ISO_PREFIX = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) /;
const PID_PREFIX = /^(\d+)@(\d+)\.(\d+):/;
const IDENT = /^[A-Za-z_]\w*$/;

function isoFromEpoch(sec: string, usec: string): string {
  const d = new Date(Number(sec) * 1000);
  return d.toISOString().replace(/\.\d+Z$/, `.${usec.padStart(6, '0')}Z`);
}

/** Parses single lines against one build's formats. */
export class TraceLineParser {
  // Trace lines come in runs of one event: the previous lookup is usually the answer.
  private lastName = '';
  private lastMatcher: CompiledMatcher | undefined;

  constructor(readonly formats: TraceFormats) {}

  parseLine(raw: string, line: number): ParsedLine {
    let start = 0;
    let time: string | undefined;
    let pid: number | undefined;
    const c0 = raw.charCodeAt(0);
    if (c0 >= 48 && c0 <= 57) {
      const iso = ISO_PREFIX.exec(raw);
      if (iso) {
        time = iso[1];
        start = iso[0].length;
      } else {
        const old = PID_PREFIX.exec(raw);
        if (old) {
          pid = Number(old[1]);
          time = isoFromEpoch(old[2]!, old[3]!);
          start = old[0].length;
        }
      }
    }
    const sp = raw.indexOf(' ', start);
    const name = sp < 0 ? raw.slice(start) : raw.slice(start, sp);
    let matcher: CompiledMatcher | undefined;
    if (name === this.lastName) matcher = this.lastMatcher;
    else {
      try {
        matcher = this.formats.matcher(name);
      } catch (e) {
        return this.diag(raw, line, time, name, (e as Error).message);
      }
      this.lastName = name;
      this.lastMatcher = matcher;
    }
    if (matcher === undefined) {
      const rec: RawRecord = { kind: 'raw', line, raw, reason: 'foreign' };
      if (IDENT.test(name) && sp > start) {
        rec.reason = 'unknown-event';
        rec.event = name;
      }
      if (time !== undefined) rec.time = time;
      return rec;
    }
    const rest = sp < 0 ? '' : raw.slice(sp + 1);
    const m = matcher.regex.exec(rest);
    if (m === null) {
      const ev = this.formats.get(name)!;
      return this.diag(raw, line, time, name, `does not match the format of ${name}: "${ev.format}"`);
    }
    const fields: Record<string, FieldValue> = {};
    const names = matcher.fields;
    const conv = matcher.converters;
    for (let i = 0; i < names.length; i++) fields[names[i]!] = conv[i]!(m[i + 1]!);
    const rec: EventRecord = { kind: 'event', line, raw, event: name, fields };
    if (time !== undefined) rec.time = time;
    if (pid !== undefined) rec.pid = pid;
    return rec;
  }

  private diag(raw: string, line: number, time: string | undefined, event: string, message: string): Diagnostic {
    const d: Diagnostic = { kind: 'diagnostic', line, raw, event, message: `line ${line}: ${message}` };
    if (time !== undefined) d.time = time;
    return d;
  }
}

export interface ParseResult {
  records: TraceRecord[];
  diagnostics: Diagnostic[];
}

/**
 * Incremental parser: push text chunks as they arrive; only whole lines are
 * parsed until `end()`, which parses a final unterminated line too.
 */
export class TraceStreamParser {
  private readonly lp: TraceLineParser;
  private partial = '';
  private lineNo = 0;

  constructor(
    formats: TraceFormats,
    private readonly sink: (p: ParsedLine) => void,
  ) {
    this.lp = new TraceLineParser(formats);
  }

  get linesSeen(): number {
    return this.lineNo;
  }

  push(chunk: string): void {
    let text = this.partial + chunk;
    let from = 0;
    for (;;) {
      const nl = text.indexOf('\n', from);
      if (nl < 0) break;
      this.emit(text.slice(from, nl));
      from = nl + 1;
    }
    this.partial = from === 0 ? text : text.slice(from);
    text = '';
  }

  end(): void {
    if (this.partial !== '') this.emit(this.partial);
    this.partial = '';
  }

  private emit(line: string): void {
    this.lineNo++;
    if (line.length === 0) return;
    if (line.charCodeAt(line.length - 1) === 13) line = line.slice(0, -1);
    this.sink(this.lp.parseLine(line, this.lineNo));
  }
}

function collector(): { result: ParseResult; sink: (p: ParsedLine) => void } {
  const result: ParseResult = { records: [], diagnostics: [] };
  return {
    result,
    sink: (p) => (p.kind === 'diagnostic' ? result.diagnostics.push(p) : result.records.push(p)),
  };
}

/** Parses a whole trace text. */
export function parseTrace(text: string, formats: TraceFormats): ParseResult {
  const { result, sink } = collector();
  const p = new TraceStreamParser(formats, sink);
  p.push(text);
  p.end();
  return result;
}

/** Streams a trace file through `sink` (or collects it when no sink is given). */
export async function parseTraceFile(path: string, formats: TraceFormats): Promise<ParseResult>;
export async function parseTraceFile(path: string, formats: TraceFormats, sink: (p: ParsedLine) => void): Promise<void>;
export async function parseTraceFile(
  path: string,
  formats: TraceFormats,
  sink?: (p: ParsedLine) => void,
): Promise<ParseResult | void> {
  const c = sink ? undefined : collector();
  const parser = new TraceStreamParser(formats, sink ?? c!.sink);
  const decoder = new StringDecoder('utf8');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    parser.push(decoder.write(chunk as Buffer));
  }
  parser.push(decoder.end());
  parser.end();
  return c?.result;
}
