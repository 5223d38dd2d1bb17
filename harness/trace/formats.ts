/**
 * Event formats from a QEMU build's own `share/qemu/trace-events-all`, compiled
 * into matchers for the log trace backend's output. Nothing here knows one QEMU
 * version: event names, argument names and format strings all come from the
 * file of the build in use, so a renamed event (e.g. the pre-PASID
 * `iommufd_cdev_attach_ioas_hwpt`) is simply another entry.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheDir } from '../util/paths.js';

/** What a printf conversion prints, hence how its text is read back. */
export type ConvKind = 'int' | 'uint' | 'hex' | 'oct' | 'ptr' | 'str' | 'char' | 'float';

export interface TraceArg {
  type: string;
  name: string;
}

export interface Conversion {
  /** The conversion as written after macro expansion, e.g. `%08llx`. */
  spec: string;
  kind: ConvKind;
  /** Record field this conversion fills. */
  field: string;
  /** Index into the event's C arguments (star widths consume one too). */
  argIndex: number;
}

export interface EventFormat {
  name: string;
  /** Properties written before the name: `disable`, `tcg`, `vcpu`, ... */
  props: string[];
  args: TraceArg[];
  /** The C format with PRI* macros expanded and escapes resolved. */
  format: string;
  conversions: Conversion[];
  /** 1-based line in the trace-events file. */
  line: number;
}

export type FieldValue = number | bigint | string;

/** A compiled format: one anchored regex, one capture per conversion. */
export interface CompiledMatcher {
  regex: RegExp;
  fields: string[];
  kinds: ConvKind[];
  /** One converter per capture (kinds resolved once, not per line). */
  converters: ((s: string) => FieldValue)[];
}

export interface FormatFileError {
  line: number;
  text: string;
  message: string;
}

// Arguments never contain parentheses (tracetool's own rule), formats may.
const LINE_RE = /^((?:[a-z][\w-]*\s+)*?)([A-Za-z_]\w*)\(([^)]*)\)\s*(.*)$/;
const PRI_RE = /^PRI([diouxX])(8|16|32|64|PTR|MAX|FAST\d+|LEAST\d+)$/;
const FMT_TOKEN_RE = /\s*(?:"((?:[^"\\]|\\.)*)"|([A-Za-z_]\w*)|(,))/y;
const CONV_RE = /%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d*))?(hh|h|ll|l|L|q|j|z|Z|t)?([diouxXcspfFeEgGaAn%])/g;
const NAME_BEFORE_RE = /([A-Za-z_]\w*)\s*[=:]\s*(?:0[xX])?['"[(]?$/;

/** Splits one `trace-events` line into its parts; null for blanks and comments. */
export function parseEventLine(text: string, line: number): EventFormat | FormatFileError | null {
  const trimmed = text.trim();
  if (trimmed === '' || trimmed.startsWith('#')) return null;
  const m = LINE_RE.exec(trimmed);
  if (!m) return { line, text, message: 'not of the form `[props] name(args) "format"`' };
  const props = (m[1] ?? '').split(/\s+/).filter(Boolean);
  const name = m[2]!;
  let args: TraceArg[];
  try {
    args = parseArgs(m[3]!);
  } catch (e) {
    return { line, text, message: `${name}: ${(e as Error).message}` };
  }
  let formats: string[];
  try {
    formats = parseFormatLiterals(m[4]!);
  } catch (e) {
    return { line, text, message: `${name}: ${(e as Error).message}` };
  }
  // Old tcg events carry a translation-time and an execution-time format.
  let format = formats[formats.length - 1] ?? '';
  // Old tracetool gave vcpu events a hidden CPUState argument printed first.
  if (props.includes('vcpu')) {
    args = [{ type: 'void *', name: '__cpu' }, ...args];
    format = 'cpu=%p ' + format;
  }
  let conversions: Conversion[];
  try {
    conversions = conversionsOf(format, args.map((a) => a.name));
  } catch (e) {
    return { line, text, message: `${name}: ${(e as Error).message}` };
  }
  return { name, props, args, format, conversions, line };
}

function parseArgs(text: string): TraceArg[] {
  const t = text.trim();
  if (t === '' || t === 'void') return [];
  return t.split(',').map((part, i) => {
    const p = part.trim();
    const m = /^(.*?)([A-Za-z_]\w*)$/.exec(p);
    if (!m || m[1]!.trim() === '') throw new Error(`argument ${i + 1} \`${p}\` has no type and name`);
    return { type: m[1]!.trim(), name: m[2]! };
  });
}

/** `"a" PRIx64 "b"` → `a%llx…b` (the `%` is in the literal before the macro). */
function parseFormatLiterals(text: string): string[] {
  const out: string[] = [];
  let cur: string | undefined;
  FMT_TOKEN_RE.lastIndex = 0;
  let pos = 0;
  const rest = text.trimEnd();
  while (pos < rest.length) {
    FMT_TOKEN_RE.lastIndex = pos;
    const m = FMT_TOKEN_RE.exec(rest);
    if (!m) throw new Error(`unexpected text in format at \`${rest.slice(pos, pos + 20)}\``);
    pos = FMT_TOKEN_RE.lastIndex;
    if (m[1] !== undefined) cur = (cur ?? '') + unescapeC(m[1]);
    else if (m[2] !== undefined) {
      const pri = PRI_RE.exec(m[2]);
      if (!pri) throw new Error(`unknown macro ${m[2]} in format`);
      cur = (cur ?? '') + (pri[2] === '64' || pri[2] === 'PTR' || pri[2] === 'MAX' ? 'll' : '') + pri[1];
    } else {
      out.push(cur ?? '');
      cur = undefined;
    }
  }
  if (cur !== undefined) out.push(cur);
  return out;
}

function unescapeC(s: string): string {
  if (!s.includes('\\')) return s;
  return s.replace(/\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)/g, (_, e: string) => {
    switch (e[0]) {
      case 'n': return '\n';
      case 't': return '\t';
      case 'r': return '\r';
      case 'x': return String.fromCharCode(parseInt(e.slice(1), 16));
      default:
        return /^[0-7]/.test(e) ? String.fromCharCode(parseInt(e, 8)) : e;
    }
  });
}

/**
 * The conversions of a printf format with their field names: `name=` or
 * `name:` just before a conversion names it; a trailing `(%d)` is `ret`;
 * otherwise the C argument at the same position names it.
 */
export function conversionsOf(format: string, argNames: readonly string[]): Conversion[] {
  const convs: Conversion[] = [];
  const used = new Set<string>();
  let argIndex = 0;
  let lastEnd = 0;
  CONV_RE.lastIndex = 0;
  const all = [...format.matchAll(CONV_RE)].filter((m) => m[5] !== '%');
  all.forEach((m, i) => {
    const [spec, , width, precision, , letter] = m;
    if (width === '*') argIndex++;
    if (precision === '*') argIndex++;
    if (letter === 'n') return;
    const before = format.slice(lastEnd, m.index);
    lastEnd = m.index + spec.length;
    const after = format.slice(lastEnd);
    const cName = argNames[argIndex];
    let field: string | undefined;
    if (i === all.length - 1 && /\($/.test(before) && after === ')') field = 'ret';
    else field = NAME_BEFORE_RE.exec(before)?.[1];
    if (field === undefined || used.has(field)) field = cName ?? `arg${argIndex}`;
    if (used.has(field)) field = `${field}_${i}`;
    used.add(field);
    convs.push({ spec, kind: kindOf(letter!), field, argIndex });
    argIndex++;
  });
  return convs;
}

function kindOf(letter: string): ConvKind {
  switch (letter) {
    case 'd': case 'i': return 'int';
    case 'u': return 'uint';
    case 'x': case 'X': return 'hex';
    case 'o': return 'oct';
    case 'p': return 'ptr';
    case 's': return 'str';
    case 'c': return 'char';
    default: return 'float';
  }
}

function reEscape(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&').replace(/\n/g, '\\n').replace(/\t/g, '\\t');
}

const CAPTURE: Record<ConvKind, string> = {
  int: '([-+ ]?\\d+)',
  uint: '(\\d+)',
  hex: '([0-9a-fA-F]+)',
  oct: '([0-7]+)',
  ptr: '(0x[0-9a-fA-F]+|\\(nil\\))',
  str: '(.*?)',
  char: '(.?)',
  float: '([-+ ]?(?:\\d+(?:\\.\\d*)?(?:[eE][-+]?\\d+)?|\\.\\d+|inf|nan|0x[0-9a-fA-F.p+-]+))',
};

/** Compiles an expanded format into an anchored regex over the text after `name `. */
export function compileFormat(format: string, conversions: readonly Conversion[]): CompiledMatcher {
  let src = '^';
  let last = 0;
  let ci = 0;
  CONV_RE.lastIndex = 0;
  for (const m of format.matchAll(CONV_RE)) {
    const [spec, flags = '', width, , , letter] = m;
    src += reEscape(format.slice(last, m.index));
    last = m.index + spec.length;
    if (letter === '%') {
      src += '%';
      continue;
    }
    if (letter === 'n') continue;
    const conv = conversions[ci++];
    if (!conv) throw new Error(`conversion ${spec} has no field`);
    // A width pads with spaces unless the 0 flag pads with zeros.
    const padded = width !== undefined && conv.kind !== 'str' && !(flags.includes('0') && !flags.includes('-'));
    // The last string may take the rest greedily: same match, no lazy step per character.
    let cap = conv.kind === 'str' && ci === conversions.length ? '(.*)' : CAPTURE[conv.kind];
    if (conv.kind === 'hex' && flags.includes('#')) cap = '(?:0[xX])?([0-9a-fA-F]+)';
    // Space padding from a width sits outside the capture so numbers stay clean.
    src += padded && !flags.includes('-') ? ' *' + cap : cap;
    if (padded && flags.includes('-')) src += ' *';
  }
  src += reEscape(format.slice(last)) + '$';
  return {
    regex: new RegExp(src, 's'),
    fields: conversions.map((c) => c.field),
    kinds: conversions.map((c) => c.kind),
    converters: conversions.map((c) => CONVERTERS[c.kind]),
  };
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);

function bigOrNumber(b: bigint): number | bigint {
  return b <= MAX_SAFE && b >= MIN_SAFE ? Number(b) : b;
}

/** The regex guarantees hex digits; a loop beats parseInt on V8's sliced capture strings. */
function hexNumber(s: string, from: number): FieldValue {
  if (s.length - from > 13) return bigOrNumber(BigInt('0x' + s.slice(from)));
  let v = 0;
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    v = v * 16 + (c <= 57 ? c - 48 : (c | 32) - 87);
  }
  return v;
}

const decimal = (s: string): FieldValue => (s.length <= 15 ? Number(s) : bigOrNumber(BigInt(s.trim().replace(/^\+/, ''))));

// Below 2^53 a number, above it a bigint: 13 hex digits, 15 decimal digits or 17 octal ones always fit.
const CONVERTERS: Record<ConvKind, (s: string) => FieldValue> = {
  int: decimal,
  uint: decimal,
  hex: (s) => hexNumber(s, 0),
  ptr: (s) => (s === '(nil)' ? 0 : hexNumber(s, 2)),
  oct: (s) => (s.length <= 17 ? parseInt(s, 8) : bigOrNumber(BigInt('0o' + s))),
  float: Number,
  str: (s) => s,
  char: (s) => s,
};

/** Captured text → typed value: numbers, bigint beyond 2^53, strings kept. */
export function convertValue(kind: ConvKind, s: string): FieldValue {
  return CONVERTERS[kind](s);
}

/** All events of one trace-events file, with matchers compiled on first use. */
export class TraceFormats {
  readonly errors: FormatFileError[];
  private readonly events = new Map<string, EventFormat>();
  private readonly matchers = new Map<string, CompiledMatcher | Error>();

  constructor(
    events: Iterable<EventFormat>,
    errors: FormatFileError[] = [],
    readonly source = '<text>',
  ) {
    for (const e of events) this.events.set(e.name, e);
    this.errors = errors;
  }

  static fromText(text: string, source = '<text>'): TraceFormats {
    const events: EventFormat[] = [];
    const errors: FormatFileError[] = [];
    text.split('\n').forEach((l, i) => {
      const r = parseEventLine(l, i + 1);
      if (r === null) return;
      if ('message' in r) errors.push(r);
      else events.push(r);
    });
    return new TraceFormats(events, errors, source);
  }

  static async load(path: string = defaultTraceEventsPath()): Promise<TraceFormats> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      throw new Error(`trace-events file ${path}: ${(e as Error).message}`);
    }
    return TraceFormats.fromText(text, path);
  }

  get size(): number {
    return this.events.size;
  }

  names(): IterableIterator<string> {
    return this.events.keys();
  }

  has(name: string): boolean {
    return this.events.has(name);
  }

  get(name: string): EventFormat | undefined {
    return this.events.get(name);
  }

  /** The event's matcher; undefined for an unknown event; throws if its format does not compile. */
  matcher(name: string): CompiledMatcher | undefined {
    let m = this.matchers.get(name);
    if (m === undefined) {
      const ev = this.events.get(name);
      if (!ev) return undefined;
      try {
        m = compileFormat(ev.format, ev.conversions);
      } catch (e) {
        m = new Error(`event ${name} (${this.source}:${ev.line}): ${(e as Error).message}`);
      }
      this.matchers.set(name, m);
    }
    if (m instanceof Error) throw m;
    return m;
  }

  /** Compiles every format (for tests and `doctor`); lists those that fail. */
  compileAll(): { compiled: number; failed: { event: string; error: string }[] } {
    let compiled = 0;
    const failed: { event: string; error: string }[] = [];
    for (const name of this.events.keys()) {
      try {
        this.matcher(name);
        compiled++;
      } catch (e) {
        failed.push({ event: name, error: (e as Error).message });
      }
    }
    return { compiled, failed };
  }
}

/** The reference QEMU's trace-events-all (scripts/install-qemu.sh puts it there). */
export function defaultTraceEventsPath(): string {
  return join(cacheDir(), 'qemu', 'usr', 'share', 'qemu', 'trace-events-all');
}
