/**
 * A run folder (artifacts/runs/<time>-<pid>/) read back as the report shows
 * it: each test's result joined to its artifact folder, each machine's files
 * turned into timeline entries, QEMU's trace into the iommufd model with the
 * kernel's answers (kprobes.trace) and the oracle's expectation beside each
 * request, and the virtual lab's L1 runs (under a machine folder's
 * artifacts/) read the same way, recursively.
 *
 * Reading only: nothing here needs the QEMU, the host or the devices that
 * made the run, so a report can be built from a folder copied elsewhere.
 * (index.ts writes model.json and failure.txt from what this reads.)
 */
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { basename, join, relative, resolve, sep } from 'node:path';
import type { TestResult } from '../junit.js';
import { parseKprobeTrace } from '../../trace/kprobes.js';
import { IommufdModel, type KernelJoin, type KernelRecord } from '../../trace/model.js';
import { expectHwpt, hostCapsOf, type HostCaps, type HwptExpectation, type ViommuConfig } from '../../trace/oracle.js';
import { formatHwptFlags } from '../../trace/flags.js';
import { TraceFormats, defaultTraceEventsPath } from '../../trace/formats.js';
import { parseTrace, type ParseResult } from '../../trace/parse.js';
import { hostDevices, normalBdf, parseCmdline, traceEventsBeside, viommuOf, type QemuCmdline } from './cmdline.js';
import { consoleEntries, DIRECT_PROBE_TASK, kernelEntries, qmpEntries, stderrEntries, traceEntries, type Entry, type Placement } from './timeline.js';

export interface BuildOptions {
  /**
   * The trace-events-all to parse a machine's trace with, given the binary its
   * cmdline.txt names; undefined falls back to the file beside the binary,
   * then the reference QEMU's.
   */
  traceEvents?: (binary: string | undefined) => string | undefined;
}

export interface MachineView {
  name: string;
  /** Relative to the report's folder. */
  rel: string;
  files: string[];
  cmdline?: QemuCmdline;
  qemu?: { version: string; package?: string };
  exit?: { code: number | null; signal: string | null; text: string };
  /** The formats file the trace was parsed with, and why that one. */
  formats?: string;
  model?: IommufdModel;
  parse?: ParseResult;
  viommu?: { config: ViommuConfig; note?: string };
  /** An L1 run inside this machine's folder (the virtual lab). */
  nested?: RunView;
}

export interface OracleRow {
  bdf: string;
  expectation?: HwptExpectation;
  /** Why there is no expectation, or where the device's hw info came from. */
  note: string;
}

export interface TestView {
  /** undefined for a folder no result claims (a suite's machines, e.g. the virtual lab's L1). */
  result?: TestResult;
  title: string;
  /** Relative to the report's folder; undefined when the test has no artifacts. */
  rel?: string;
  /** Why the folder is missing, when the result names one that is not there. */
  missing?: string;
  machines: MachineView[];
  /** Every file of the test's folder, relative to the report's folder. */
  files: string[];
  placed: Entry[];
  unplaced: Entry[];
  placements: Placement[];
  oracle: OracleRow[];
  kernel?: { records: KernelRecord[]; join?: KernelJoin };
}

export interface HwInfoSource {
  bdf: string;
  caps: HostCaps;
  /** doctor.json relative to the report. */
  file: string;
  profile?: string;
  conflict?: string;
}

export interface RunView {
  dir: string;
  /** Relative to the report's folder ('' for the report's own run). */
  rel: string;
  results: TestResult[];
  resultsFile?: string;
  /** The results are what was streamed before the run stopped (no results.json). */
  partial?: boolean;
  tests: TestView[];
  /** Folders under tests/ that no result claims (a suite's own machines). */
  others: TestView[];
  /** run-info.json, written when the report was built at the end of the run itself. */
  info?: Record<string, unknown>;
  /** doctor.json hosts found in the run (kernel, profile). */
  hosts: { file: string; kernel?: string; arch?: string; profile?: string }[];
}

const exists = (p: string) => existsSync(p);
const readText = (p: string): string => readFileSync(p, 'utf8');
const isDir = (p: string) => {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
};

function filesUnder(dir: string, skip: (p: string) => boolean = () => false): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      if (skip(p)) continue;
      const st = lstatSync(p);
      if (st.isDirectory()) walk(p);
      else out.push(p);
    }
  };
  if (isDir(dir)) walk(dir);
  return out;
}

/**
 * A result's artifactsDir on this disk: the path as recorded when it exists
 * under the run folder, else the part after `/runs/<this run's name>/` (an
 * L1 run records paths under its /mnt share; a copied folder moves them),
 * else after the first `/runs/<name>/` (a copy under another name).
 */
export function localArtifactsDir(recorded: string, runDir: string): string | undefined {
  const abs = resolve(recorded);
  const real = resolve(runDir);
  if (abs === real || abs.startsWith(real + sep)) return exists(abs) ? abs : undefined;
  const marker = `/runs/${basename(real)}/`;
  const i = recorded.indexOf(marker);
  if (i >= 0) {
    const p = join(real, recorded.slice(i + marker.length));
    if (exists(p)) return p;
  }
  // A renamed copy: the first runs/<any>/tests/ of the recorded path is this run's tests/.
  const m = /\/runs\/[^/]+\/(tests\/.+)$/.exec(recorded);
  const p = m ? join(real, m[1]!) : undefined;
  return p && exists(p) ? p : undefined;
}

const formatsCache = new Map<string, TraceFormats | Error>();
function formatsAt(path: string): TraceFormats | Error {
  let f = formatsCache.get(path);
  if (!f) {
    try {
      f = TraceFormats.fromText(readText(path), path);
    } catch (e) {
      f = new Error(`${path}: ${(e as Error).message}`);
    }
    formatsCache.set(path, f);
  }
  return f;
}

function chooseFormats(binary: string | undefined, opts: BuildOptions): { formats?: TraceFormats; why: string } {
  const tried: string[] = [];
  const candidates: Array<[string | undefined, string]> = [
    [opts.traceEvents?.(binary), 'given for this binary'],
    [binary ? traceEventsBeside(binary) : undefined, "the binary's own"],
    [defaultTraceEventsPath(), "the reference QEMU's (the binary's own was not found)"],
  ];
  for (const [p, why] of candidates) {
    if (!p) continue;
    if (!exists(p)) {
      tried.push(p);
      continue;
    }
    const f = formatsAt(p);
    if (f instanceof Error) tried.push(f.message);
    else return { formats: f, why: `${p} (${why})` };
  }
  return { why: `no trace-events-all found (tried ${tried.join(', ') || 'nothing'}): trace lines shown as written` };
}

function readMachine(dir: string, reportDir: string, opts: BuildOptions): MachineView {
  const rel = relative(reportDir, dir);
  const m: MachineView = { name: basename(dir), rel, files: [] };
  const at = (n: string) => join(dir, n);
  if (exists(at('cmdline.txt'))) {
    try {
      m.cmdline = parseCmdline(readText(at('cmdline.txt')));
      const v = viommuOf(m.cmdline.devices);
      m.viommu = { config: v.config, ...(v.note ? { note: v.note } : {}) };
    } catch {
      /* shown as a file; nothing to learn from it */
    }
  }
  if (exists(at('exit.json'))) {
    try {
      m.exit = JSON.parse(readText(at('exit.json'))) as MachineView['exit'];
    } catch {
      /* a half-written exit.json: the file link stays */
    }
  }
  if (exists(at('trace.log'))) {
    const chosen = chooseFormats(m.cmdline?.binary, opts);
    m.formats = chosen.why;
    if (chosen.formats) {
      m.parse = parseTrace(readText(at('trace.log')), chosen.formats);
      m.model = IommufdModel.fromParse(m.parse);
      if (exists(at('stderr.log'))) m.model.addQemuMessages(readText(at('stderr.log')), 'stderr.log');
    }
  }
  return m;
}

/** The L1 run(s) a machine folder holds: artifacts/latest, else every artifacts/runs/* folder. */
function nestedRunDirs(machineDir: string): string[] {
  const latest = join(machineDir, 'artifacts', 'latest');
  try {
    if (lstatSync(latest).isSymbolicLink()) {
      const target = resolve(join(machineDir, 'artifacts'), readlinkSync(latest));
      if (isDir(target)) return [target];
      // An absolute link made inside L1 (/mnt/artifacts/runs/X): the same name under our runs/.
      const local = join(machineDir, 'artifacts', 'runs', basename(target));
      if (isDir(local)) return [local];
    }
  } catch {
    /* no latest link */
  }
  const runs = join(machineDir, 'artifacts', 'runs');
  return isDir(runs) ? readdirSync(runs).sort().map((n) => join(runs, n)).filter(isDir) : [];
}

/** Device hw info from every doctor.json in the report's tree, by BDF. */
export function hwInfoIndex(rootDir: string, reportDir: string): Map<string, HwInfoSource> {
  const index = new Map<string, HwInfoSource>();
  for (const f of filesUnder(rootDir).filter((p) => basename(p) === 'doctor.json')) {
    let d: { devices?: Array<{ bdf?: string; hwInfo?: { ok?: boolean; outCapabilities?: number; outMaxPasidLog2?: number; smmuv3?: { idr: number[] } } }>; profile?: { name?: string } };
    try {
      d = JSON.parse(readText(f)) as typeof d;
    } catch {
      continue;
    }
    for (const dev of d.devices ?? []) {
      const hw = dev.hwInfo;
      if (!dev.bdf || !hw?.ok || typeof hw.outCapabilities !== 'number' || typeof hw.outMaxPasidLog2 !== 'number') continue;
      const caps = hostCapsOf({ outCapabilities: hw.outCapabilities, outMaxPasidLog2: hw.outMaxPasidLog2, ...(hw.smmuv3 ? { smmuv3: hw.smmuv3 as never } : {}) });
      const bdf = normalBdf(dev.bdf);
      const file = relative(reportDir, f);
      const prev = index.get(bdf);
      if (prev && JSON.stringify(prev.caps) !== JSON.stringify(caps)) prev.conflict = `${prev.file} and ${file} disagree on its hw info`;
      else if (!prev) index.set(bdf, { bdf, caps, file, ...(d.profile?.name ? { profile: d.profile.name } : {}) });
    }
  }
  return index;
}

/** The devices a test passed through, cold-plugged then hot-plugged (QMP device_add), in order of first appearance. */
function devicesOf(t: TestView): string[] {
  const seen: string[] = [];
  for (const m of t.machines) {
    for (const b of m.cmdline ? hostDevices(m.cmdline.devices) : []) if (!seen.includes(b)) seen.push(b);
    for (const e of t.placed.concat(t.unplaced)) {
      if (e.source !== 'qmp' || e.machine !== m.name || !e.text.startsWith('→ device_add')) continue;
      const host = /"host":"([^"]+)"/.exec(e.raw)?.[1];
      if (host && /"driver":"vfio-pci"/.test(e.raw) && !seen.includes(normalBdf(host))) seen.push(normalBdf(host));
    }
  }
  return seen;
}

/** The oracle beside each parent-HWPT request, where the device's hw info is in the run. */
function joinOracle(t: TestView, hw: Map<string, HwInfoSource>): void {
  const m = t.machines.find((x) => x.model && x.viommu);
  if (!m?.model || !m.viommu) return;
  const bdfs = devicesOf(t);
  t.oracle = bdfs.map((bdf, i): OracleRow => {
    const src = hw.get(bdf);
    if (!src) return { bdf, note: `no hw info for ${bdf} in this run (a doctor.json lists a device's IOMMU_GET_HW_INFO): the oracle's flags cannot be computed` };
    if (src.conflict) return { bdf, note: `hw info for ${bdf} is ambiguous: ${src.conflict}` };
    const expectation = expectHwpt(m.viommu!.config, src.caps, i > 0 ? { secondDevice: true } : {});
    return { bdf, expectation, note: `hw info of ${bdf} from ${src.file}${src.profile ? ` (host profile ${src.profile})` : ''}: dirty tracking ${src.caps.dirtyTracking ? 'yes' : 'no'}, max_pasid_log2=${src.caps.maxPasidLog2}` };
  });
  const byBdf = new Map(t.oracle.filter((o) => o.expectation).map((o) => [o.bdf, o.expectation!]));
  for (const h of m.model.hwptAllocs) {
    if (h.role !== 'parent') continue;
    const bind = m.model.binds.filter((b) => b.devId === h.devId && b.iommufd === h.iommufd && b.record.line < h.record.line).pop();
    const exp = bind ? byBdf.get(normalBdf(bind.name)) : undefined;
    const e = t.placed.concat(t.unplaced).find((x) => x.source === 'trace' && x.machine === m.name && x.line === h.record.line);
    if (!e || !exp) continue;
    if (!exp.parent) e.oracle = { text: `oracle: no request (an existing HWPT is reused)`, match: false };
    else {
      const match = exp.parent.flags === h.flags;
      e.oracle = { text: `oracle: flags=${formatHwptFlags(exp.parent.flags)} — ${exp.parent.because}`, match };
    }
  }
}

function readTest(dir: string, reportDir: string, opts: BuildOptions, result?: TestResult): TestView {
  const title = result ? `${result.suite} › ${result.title}` : relative(join(reportDir, 'tests'), dir) || basename(dir);
  const t: TestView = { title, rel: relative(reportDir, dir), machines: [], files: [], placed: [], unplaced: [], placements: [], oracle: [] };
  if (result) t.result = result;
  // Machine folders: any subfolder QEMU's artifacts went to (machine.ts writes cmdline.txt first).
  const machineDirs = readdirSync(dir).sort().map((n) => join(dir, n)).filter((p) => isDir(p) && (exists(join(p, 'cmdline.txt')) || exists(join(p, 'qmp.jsonl'))));
  t.machines = machineDirs.map((d) => readMachine(d, reportDir, opts));
  const nestedRoots = new Set(machineDirs.map((d) => join(d, 'artifacts')));
  t.files = filesUnder(dir, (p) => nestedRoots.has(p)).map((p) => relative(reportDir, p));
  const add = (r: { entries: Entry[]; placement: Placement }) => {
    for (const e of r.entries) (e.t === undefined ? t.unplaced : t.placed).push(e);
    t.placements.push(r.placement);
  };
  for (const m of t.machines) {
    const f = (n: string) => join(dir, m.name, n);
    const rel = (n: string) => relative(reportDir, f(n));
    if (exists(f('qmp.jsonl'))) {
      const q = qmpEntries(readText(f('qmp.jsonl')), rel('qmp.jsonl'), m.name);
      if (q.greeting) m.qemu = q.greeting;
      add(q);
    }
    if (m.parse && m.model) add(traceEntries(m.parse, m.model, rel('trace.log'), m.name));
    else if (exists(f('trace.log'))) t.placements.push({ source: 'trace', file: rel('trace.log'), placed: false, how: m.formats ?? 'not parsed' });
    if (exists(f('stderr.log'))) add(stderrEntries(readText(f('stderr.log')), rel('stderr.log'), m.name));
    for (const n of readdirSync(join(dir, m.name)).filter((x) => /^serial\d*\.log$|^console.*\.log$/.test(x)).sort()) add(consoleEntries(readText(f(n)), rel(n), m.name));
    m.files = t.files.filter((p) => p.startsWith(m.rel + sep));
    const nested = nestedRunDirs(join(dir, m.name));
    // L1 writes its results to the share's results.json too (HARNESS_RESULTS_JSON): older runs only there.
    if (nested.length) m.nested = readRun(nested.at(-1)!, reportDir, opts, join(dir, m.name, 'results.json'));
  }
  // The kernel's answers, joined to the machine whose trace has the requests.
  const kp = join(dir, 'kprobes.trace');
  if (exists(kp)) {
    const records = parseKprobeTrace(readText(kp), 'kprobes.trace');
    const m = t.machines.find((x) => x.model && x.model.hwptAllocs.length) ?? t.machines.find((x) => x.model);
    let join_: KernelJoin | undefined;
    if (m?.model) {
      // The harness's own direct requests (same flags, same ids) are not QEMU's: never join them.
      for (const k of records) if (k.event !== 'unparsed' && !String(k.fields.task ?? '').startsWith(DIRECT_PROBE_TASK)) m.model.addKernel(k);
      join_ = m.model.joinKernel();
      // The trace's words now carry the kernel's errnos: redo them.
      t.placed = t.placed.filter((e) => !(e.source === 'trace' && e.machine === m.name));
      t.unplaced = t.unplaced.filter((e) => !(e.source === 'trace' && e.machine === m.name));
      t.placements = t.placements.filter((p) => !(p.source === 'trace' && p.file === relative(reportDir, join(dir, m.name, 'trace.log'))));
      add(traceEntries(m.parse!, m.model, relative(reportDir, join(dir, m.name, 'trace.log')), m.name));
    }
    add(kernelEntries(records.filter((k) => k.event !== 'unparsed'), join_, relative(reportDir, kp), 'host kernel'));
    t.kernel = { records, ...(join_ ? { join: join_ } : {}) };
  }
  t.placed.sort((a, b) => a.t! - b.t! || a.line - b.line);
  return t;
}

/** Reads a run folder; `reportDir` is where the page goes (links are relative to it). */
export function readRun(dir: string, reportDir: string = dir, opts: BuildOptions = {}, resultsElsewhere?: string): RunView {
  const run: RunView = { dir, rel: relative(reportDir, dir), results: [], tests: [], others: [], hosts: [] };
  const own = join(dir, 'results.json');
  const resultsFile = !exists(own) && resultsElsewhere && exists(resultsElsewhere) ? resultsElsewhere : own;
  // What L1 streamed as each test finished (HARNESS_RESULTS_JSONL) stands in for a results.json
  // a crashed or killed run never wrote.
  const streamed = resultsElsewhere?.replace(/\.json$/, '.jsonl');
  if (exists(resultsFile)) {
    run.resultsFile = relative(reportDir, resultsFile);
    run.results = JSON.parse(readText(resultsFile)) as TestResult[];
    if (!Array.isArray(run.results)) throw new Error(`${resultsFile}: not a list of test results`);
  } else if (streamed && exists(streamed)) {
    run.resultsFile = relative(reportDir, streamed);
    run.partial = true;
    for (const line of readText(streamed).split('\n')) {
      try {
        if (line.trim()) run.results.push(JSON.parse(line) as TestResult);
      } catch {
        /* the line a kill cut short */
      }
    }
  }
  if (exists(join(dir, 'run-info.json'))) {
    try {
      run.info = JSON.parse(readText(join(dir, 'run-info.json'))) as Record<string, unknown>;
    } catch {
      /* the page says nothing of the host then */
    }
  }
  const claimed = new Set<string>();
  for (const r of run.results) {
    const local = r.artifactsDir ? localArtifactsDir(r.artifactsDir, dir) : undefined;
    if (local) {
      claimed.add(local);
      try {
        run.tests.push(readTest(local, reportDir, opts, r));
      } catch (e) {
        // One folder the reader does not follow must not cost the whole page.
        run.tests.push({ result: r, title: `${r.suite} › ${r.title}`, rel: relative(reportDir, local), missing: `its folder could not be read: ${(e as Error).message}`, machines: [], files: [], placed: [], unplaced: [], placements: [], oracle: [] });
      }
    } else {
      const t: TestView = { result: r, title: `${r.suite} › ${r.title}`, machines: [], files: [], placed: [], unplaced: [], placements: [], oracle: [] };
      if (r.artifactsDir) t.missing = `its folder ${r.artifactsDir} is not in this run folder`;
      run.tests.push(t);
    }
  }
  // Folders with machines that no result claims (a suite's own machines, e.g. L1).
  const walk = (d: string) => {
    if (claimed.has(d)) return;
    // Another run's folder kept as a test's artifact (a copy the report's own tests build): not this run's.
    if (d !== join(dir, 'tests') && exists(join(d, 'results.json')) && isDir(join(d, 'tests'))) return;
    const subs = readdirSync(d).sort().map((n) => join(d, n)).filter(isDir);
    if (subs.some((s) => exists(join(s, 'cmdline.txt')) || exists(join(s, 'qmp.jsonl')))) {
      run.others.push(readTest(d, reportDir, opts));
      return;
    }
    for (const s of subs) walk(s);
  };
  if (isDir(join(dir, 'tests'))) walk(join(dir, 'tests'));
  for (const f of filesUnder(join(dir, 'tests'), (p) => basename(p) === 'artifacts' && isDir(p)).filter((p) => basename(p) === 'doctor.json')) {
    try {
      const d = JSON.parse(readText(f)) as { host?: { kernel?: string; arch?: string }; profile?: { name?: string } };
      run.hosts.push({ file: relative(reportDir, f), ...(d.host?.kernel ? { kernel: d.host.kernel } : {}), ...(d.host?.arch ? { arch: d.host.arch } : {}), ...(d.profile?.name ? { profile: d.profile.name } : {}) });
    } catch {
      /* not ours to judge here */
    }
  }
  return run;
}

/** Every run in the tree: the run itself and its L1 runs, depth first. */
export function allRuns(run: RunView): RunView[] {
  const out = [run];
  for (const t of [...run.tests, ...run.others]) for (const m of t.machines) if (m.nested) out.push(...allRuns(m.nested));
  return out;
}

/** Joins the oracle into every test of the tree, with hw info from every doctor.json in it. */
export function joinOracles(root: RunView, reportDir: string): void {
  const hw = hwInfoIndex(root.dir, reportDir);
  for (const r of allRuns(root)) for (const t of [...r.tests, ...r.others]) joinOracle(t, hw);
}
