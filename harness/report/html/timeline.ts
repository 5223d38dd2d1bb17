/**
 * One test's evidence on one time axis. Each source keeps its own clock:
 *
 * - qmp.jsonl: wall time `t` (whole milliseconds) per line. (`ms`, since the
 *   connection opened, is monotonic but drifts from the wall clock: 11 ms in
 *   a minute under TCG, so it only orders lines within one millisecond.)
 * - trace.log, stderr.log: `-msg timestamp=on`'s ISO prefix (11.x), or old
 *   tracetool's `pid@epoch.usec:` (10.0): wall time as QEMU read it.
 * - kprobes.trace: the kernel's uptime, not wall time. It is placed only
 *   through a measured anchor: a kernel answer the model joined to a QEMU
 *   request traced with a wall time gives the offset between the two clocks
 *   (the trace line follows the ioctl's return; the spread over every pair
 *   is shown). Without such a pair it is listed apart, on its own uptime.
 * - serial console: no time at all (kernel lines carry the guest's uptime,
 *   which no other source shares): listed apart, never guessed onto the axis.
 */
import type { ParseResult } from '../../trace/parse.js';
import type { HwptAlloc, IommufdModel, KernelJoin, KernelRecord } from '../../trace/model.js';
import { errnoName, formatHwptFlags } from '../../trace/flags.js';

export type Source = 'qmp' | 'trace' | 'kernel' | 'stderr' | 'console';
export type Level = 'ok' | 'fail' | 'info' | 'minor';

export interface Entry {
  /** Milliseconds since the epoch, on the wall clock; undefined when the source could not be placed. */
  t?: number;
  /** The source's own clock when it is not the wall clock (the kernel's uptime, in seconds). */
  ownClock?: string;
  source: Source;
  /** Machine folder name (l2, q35, ...) or the test folder for test-level files. */
  machine: string;
  text: string;
  level: Level;
  /** The oracle beside a request: what it expected, and whether the request matched. */
  oracle?: { text: string; match: boolean };
  /** Link target relative to the report, and the 1-based line. */
  file: string;
  line: number;
  raw: string;
}

/** How one source file was put on the axis, in words for the page. */
export interface Placement {
  source: Source;
  file: string;
  placed: boolean;
  how: string;
}

const isoMs = (iso: string): number => {
  // Date keeps milliseconds only: add the microseconds ISO prefixes carry.
  const m = /\.(\d{3})(\d*)Z$/.exec(iso);
  const base = Date.parse(iso);
  return m && m[2] ? base + Number(`0.${m[2]}`) : base;
};

interface QmpLine {
  t: string;
  ms: number;
  dir: 'in' | 'out' | 'note';
  msg: unknown;
}

const brief = (v: unknown, max = 160): string => {
  const s = JSON.stringify(v) ?? '';
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
};

/** QMP transcript lines → entries on the wall clock. */
export function qmpEntries(text: string, file: string, machine: string): { entries: Entry[]; placement: Placement; greeting?: { version: string; package?: string } } {
  const lines: { q: QmpLine; line: number; raw: string }[] = [];
  const bad: number[] = [];
  text.split('\n').forEach((raw, i) => {
    if (!raw.trim()) return;
    try {
      const q = JSON.parse(raw) as QmpLine;
      if (typeof q.t !== 'string' || typeof q.ms !== 'number') throw new Error('no t/ms');
      lines.push({ q, line: i + 1, raw });
    } catch {
      bad.push(i + 1);
    }
  });
  let greeting: { version: string; package?: string } | undefined;
  const entries = lines.map(({ q, line, raw }): Entry => {
    const m = q.msg as Record<string, unknown>;
    let text: string;
    let level: Level = 'info';
    if (q.dir === 'note') text = `note: ${typeof m === 'string' ? m : brief(m)}`;
    else if (q.dir === 'out') text = `→ ${String(m.execute ?? m['exec-oob'] ?? '?')}${m.arguments ? ` ${brief(m.arguments)}` : ''}`;
    else if (m.QMP) {
      const v = (m.QMP as { version?: { qemu?: { major: number; minor: number; micro: number }; package?: string } }).version;
      if (v?.qemu) greeting = { version: `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`, ...(v.package ? { package: v.package } : {}) };
      text = `← greeting: QEMU ${greeting?.version ?? '?'}${greeting?.package ? ` (${greeting.package})` : ''}`;
    } else if (m.event) text = `← event ${String(m.event)}${m.data ? ` ${brief(m.data)}` : ''}`;
    else if (m.error) {
      const e = m.error as { class?: string; desc?: string };
      text = `← error (${String(m.id ?? '')}) ${e.class ?? ''}: ${e.desc ?? ''}`;
      level = 'fail';
    } else {
      text = `← return (${String(m.id ?? '')}) ${brief(m.return, 120)}`;
      level = 'ok';
    }
    return { t: Date.parse(q.t), source: 'qmp', machine, text, level, file, line, raw };
  });
  const how = lines.length
    ? `wall clock: each line's t (whole milliseconds)${bad.length ? `; ${bad.length} lines not JSON (${bad.slice(0, 3).join(', ')}…)` : ''}`
    : 'no QMP messages';
  return { entries, placement: { source: 'qmp', file, placed: lines.length > 0, how }, ...(greeting ? { greeting } : {}) };
}

/** stderr lines: those with `-msg timestamp=on`'s ISO prefix are placed, the rest listed apart. */
export function stderrEntries(text: string, file: string, machine: string): { entries: Entry[]; placement: Placement } {
  const entries: Entry[] = [];
  let placed = 0;
  text.split('\n').forEach((raw, i) => {
    if (!raw.trim()) return;
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (.*)$/.exec(raw);
    const body = m ? m[2]! : raw;
    // QEMU's warnings ("warning: ... not supported ...") are not what failed.
    const level: Level = !/\bwarning:/.test(body) && /error|fail|abort|refus|not supported|unsupported|uncompatible|incompatible/i.test(body) ? 'fail' : 'info';
    const e: Entry = { source: 'stderr', machine, text: body, level, file, line: i + 1, raw };
    if (m) {
      e.t = isoMs(m[1]!);
      placed++;
    }
    entries.push(e);
  });
  const unplaced = entries.length - placed;
  const how = !entries.length
    ? 'empty'
    : unplaced === 0
      ? 'wall clock: the -msg timestamp=on prefix of each line'
      : placed
        ? `wall clock for ${placed} lines (-msg timestamp=on prefix); ${unplaced} lines carry no time (listed apart)`
        : 'not placed: no line carries a time (QEMU without -msg timestamp=on, or messages printed before it applies)';
  return { entries, placement: { source: 'stderr', file, placed: placed > 0, how } };
}

/** The serial console: never on the axis (see the file comment). */
export function consoleEntries(text: string, file: string, machine: string, max = 60): { entries: Entry[]; placement: Placement } {
  const all = text.split('\n');
  const from = Math.max(0, all.length - max);
  const entries: Entry[] = [];
  for (let i = from; i < all.length; i++) {
    const raw = all[i]!.replace(/\r$/, '');
    if (!raw.trim()) continue;
    const up = /^\[\s*(\d+\.\d+)\]/.exec(raw)?.[1];
    // The kernel's own alarms, not words in its command line (panic=-1).
    const alarm = /Kernel panic|\bOops\b|\bBUG:|Call Trace:|segfault|\berror\b/i.test(raw);
    entries.push({ source: 'console', machine, text: raw, level: alarm ? 'fail' : 'info', file, line: i + 1, raw, ...(up ? { ownClock: `${up} s guest uptime` } : {}) });
  }
  return {
    entries,
    placement: {
      source: 'console',
      file,
      placed: false,
      how: `not placed: the console carries no wall-clock time (kernel lines carry the guest's uptime, shared with no other source)${from ? `; the last ${max} of ${all.length} lines` : ''}`,
    },
  };
}

/** Names of QEMU's iommufd requests as a person reads them. */
function hwptText(h: HwptAlloc): string {
  const pt = h.role ? `${h.ptKind ?? '?'} ${h.ptId} (${h.role})` : `${h.ptId}`;
  const answer = h.ok ? `granted → hwpt ${h.id}` : `refused ${h.errno ?? ''}${h.errnoSource ? ` (${h.errnoSource})` : ''}`.trim();
  return `QEMU asked HWPT_ALLOC flags=${formatHwptFlags(h.flags)} dev_id=${h.devId} pt_id=${pt} type=${h.hwptTypeName} → ${answer}`;
}

/** The trace's records → entries, requests in words from the model. */
export function traceEntries(parse: ParseResult, model: IommufdModel, file: string, machine: string): { entries: Entry[]; placement: Placement } {
  const words = new Map<number, { text: string; level: Level }>();
  for (const h of model.hwptAllocs) words.set(h.record.line, { text: hwptText(h), level: h.ok ? 'ok' : 'fail' });
  for (const a of model.attaches) words.set(a.record.line, { text: `QEMU attached ${a.name} pasid ${a.pasid ?? '(none)'} → ${a.targetKind ?? 'id'} ${a.targetId}${a.targetRole ? ` (${a.targetRole})` : ''}`, level: 'ok' });
  for (const d of model.detaches) words.set(d.record.line, { text: `QEMU detached ${d.name}${d.pasid !== undefined ? ` pasid ${d.pasid}` : ''}`, level: 'info' });
  for (const f of model.failures()) if (!words.has(f.record.line)) words.set(f.record.line, { text: `${f.what}: ${f.outcome}`, level: 'fail' });
  for (const r of model.retries) words.set(r.record.line, { text: `QEMU gave up the existing container: ${r.message}`, level: 'fail' });
  const entries: Entry[] = [];
  let timed = 0;
  for (const r of [...parse.records, ...parse.diagnostics].sort((a, b) => a.line - b.line)) {
    const w = words.get(r.line);
    const event = r.kind === 'event' ? r.event : r.kind === 'diagnostic' ? r.event : undefined;
    const minor = event !== undefined && /_(map|unmap)_(file_)?dma$|_device_info$|_getfd$/.test(event);
    const text = w?.text ?? (r.kind === 'diagnostic' ? `unparsed ${r.event}: ${r.message}` : r.raw.replace(/^(\d{4}-\S+Z |\d+@\d+\.\d+:)/, ''));
    const e: Entry = { source: 'trace', machine, text, level: w?.level ?? (r.kind === 'diagnostic' ? 'fail' : minor ? 'minor' : 'info'), file, line: r.line, raw: r.raw };
    if (r.time) {
      e.t = isoMs(r.time);
      timed++;
    }
    entries.push(e);
  }
  const how = !entries.length
    ? 'empty'
    : timed === entries.length
      ? 'wall clock: each line\'s prefix (ISO time from -msg timestamp=on, or pid@epoch.usec)'
      : timed
        ? `wall clock for ${timed} of ${entries.length} lines; the rest carry no time`
        : 'not placed: the trace lines carry no time prefix';
  return { entries, placement: { source: 'trace', file, placed: timed > 0, how } };
}

/** The harness's own helper that asks the kernel directly (harness/host/hwinfo.ts); its requests are not QEMU's. */
export const DIRECT_PROBE_TASK = 'iommufd-probe';

const kernelText = (k: KernelRecord): { text: string; level: Level } => {
  const f = k.fields;
  const who = String(f.task ?? '').startsWith(DIRECT_PROBE_TASK) ? "the harness's direct request" : `${String(f.task ?? '?')}-${String(f.pid ?? '?')}`;
  const ret = typeof f.ret === 'number' ? f.ret : undefined;
  const answer = ret === undefined ? 'no answer recorded' : ret === 0 ? 'granted (ret=0)' : `refused ${ret < 0 ? errnoName(ret) : ''} (ret=${ret})`;
  const vendor = f.vendor ? `; ${String(f.vendor)}(flags=0x${Number(f.vendor_flags ?? 0).toString(16)}) ret=${String(f.vendor_ret)}` : '';
  if (k.event === 'hwpt_alloc')
    return { text: `kernel answered HWPT_ALLOC flags=${formatHwptFlags(Number(f.flags))} dev_id=${String(f.dev_id)} pt_id=${String(f.pt_id)} from ${who}: ${answer}${vendor}`, level: ret === 0 ? 'ok' : ret === undefined ? 'info' : 'fail' };
  if (k.event === 'viommu_alloc') return { text: `kernel answered VIOMMU_ALLOC type=${String(f.type)} dev_id=${String(f.dev_id)} hwpt_id=${String(f.hwpt_id)} from ${who}: ${answer}`, level: ret === 0 ? 'ok' : 'fail' };
  return { text: `kernel ${k.event} ${k.raw.trim().replace(/^.*?:\s+\w+:\s+/, '')}`, level: 'info' };
};

/**
 * Kernel records (kprobes) → entries: placed on the wall clock through the
 * pairs the model joined (QEMU's traced request ↔ the kernel's answer), else
 * kept on their own uptime clock.
 */
export function kernelEntries(records: readonly KernelRecord[], join: KernelJoin | undefined, file: string, machine: string): { entries: Entry[]; placement: Placement } {
  const uptime = (k: KernelRecord) => (k.time ? Number(k.time) * 1000 : undefined);
  const pairs = join ? join.pairs.filter((p) => p.request.record.time && uptime(p.kernel) !== undefined) : [];
  const offsets = pairs.map((p) => isoMs(p.request.record.time!) - uptime(p.kernel)!);
  const offset = offsets[0];
  const entries = records.map((k): Entry => {
    const w = kernelText(k);
    const e: Entry = { source: 'kernel', machine, text: w.text, level: w.level, file, line: k.line, raw: k.raw, ...(k.time ? { ownClock: `${k.time} s kernel uptime` } : {}) };
    const up = uptime(k);
    if (offset !== undefined && up !== undefined) e.t = up + offset;
    return e;
  });
  let how: string;
  if (!records.length) how = 'no kernel records';
  else if (offset === undefined)
    how = `not placed: the kernel's uptime clock has no anchor here (no kernel answer joined to a QEMU request traced with a wall time)${join ? '' : '; no QEMU trace in this test'}`;
  else {
    const p = pairs[0]!;
    const spread = Math.max(...offsets) - Math.min(...offsets);
    how =
      `kernel uptime + ${(offset / 1000).toFixed(6)} s: anchored on its answer (line ${p.kernel.line}) to QEMU's request (trace line ${p.request.record.line}), ` +
      `which QEMU traces right after the ioctl returns${pairs.length > 1 ? `; ${pairs.length} joined pairs agree within ${spread.toFixed(3)} ms` : '; one joined pair'}`;
  }
  return { entries, placement: { source: 'kernel', file, placed: offset !== undefined, how } };
}
