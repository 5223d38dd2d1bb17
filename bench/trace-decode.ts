/**
 * Trace decoding throughput: a large file built from real captured lines, decoded
 * into typed records by harness/trace, against peers measured in the same run on
 * the same file: a naive per-line split/regex decoder in Python 3, and `grep -c`
 * (reading and line-counting only, a floor for any decoder). Target: ≥1M lines/s.
 *
 *   node dist/bench/trace-decode.js [LINES]
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { defaultTraceEventsPath, TraceFormats } from '../harness/trace/formats.js';
import { parseTraceFile } from '../harness/trace/parse.js';
import { repoRoot } from '../harness/util/paths.js';
import { formatResult, type BenchResult } from './stats.js';

const run = promisify(execFile);
const TARGET = 1_000_000;
const FIX = join(repoRoot, 'tests', 'fixtures', 'trace');
const SOURCES = ['q35-vtd-pci.log', 'q35-vtd-pci-timestamp.log', 'qmp-memory.log', 'facts-hotplug-no-viommu.log', 'facts-vtd-nested-pasid.log'];

export interface PeerResult {
  name: string;
  seconds: number;
  linesPerSec: number;
  /** Why the peer did not run, when it did not. */
  skipped?: string;
}

/** The full measurement; `benchTraceDecode` reports it in bench/stats.ts's shape. */
export interface TraceDecodeMeasurement {
  name: string;
  lines: number;
  bytes: number;
  seconds: number;
  linesPerSec: number;
  records: number;
  diagnostics: number;
  peers: PeerResult[];
  /** Our lines/s over the Python peer's (null if it could not run). */
  ratio: number | null;
  target: number;
  meetsTarget: boolean;
}

// The naive peer: split off the name, pull key=value pairs with one regex, convert numbers.
const PYTHON_PEER = String.raw`
import re, sys, time
kv = re.compile(r'(\w+)[=:] ?(0x[0-9a-fA-F]+|-?\d+)')
ts = re.compile(r'^\d{4}-\d\d-\d\dT[\d:.]+Z ')
t = time.perf_counter()
n = 0
with open(sys.argv[1], encoding='utf-8', errors='replace') as f:
    for line in f:
        line = ts.sub('', line.rstrip('\n'), count=1)
        name, _, rest = line.partition(' ')
        rec = {'event': name, 'fields': {k: int(v, 16) if v.startswith('0x') else int(v) for k, v in kv.findall(rest)}}
        n += 1
print(n, time.perf_counter() - t)
`;

function buildFile(path: string, lines: number): number {
  const real = SOURCES.flatMap((f) => readFileSync(join(FIX, f), 'utf8').split('\n').filter(Boolean));
  const out: string[] = [];
  while (out.length < lines) out.push(...real.slice(0, lines - out.length));
  const text = out.join('\n') + '\n';
  writeFileSync(path, text);
  return Buffer.byteLength(text);
}

async function python(file: string, lines: number): Promise<PeerResult> {
  const name = 'python3 naive split/regex';
  try {
    const { stdout } = await run('python3', ['-c', PYTHON_PEER, file], { timeout: 300_000 });
    const [n, s] = stdout.trim().split(/\s+/).map(Number);
    if (n !== lines) throw new Error(`python3 counted ${n} lines, expected ${lines}`);
    return { name, seconds: s!, linesPerSec: lines / s! };
  } catch (e) {
    const err = e as Error & { stderr?: string };
    return { name, seconds: NaN, linesPerSec: NaN, skipped: (err.stderr?.trim().split('\n').at(-1) ?? err.message.split('\n')[0])! };
  }
}

async function grepCount(file: string, lines: number): Promise<PeerResult> {
  const name = 'grep -c (read + count only)';
  try {
    const t = process.hrtime.bigint();
    const { stdout } = await run('grep', ['-c', '', file], { timeout: 300_000 });
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    if (Number(stdout.trim()) !== lines) throw new Error(`grep counted ${stdout.trim()} lines`);
    return { name, seconds: s, linesPerSec: lines / s };
  } catch (e) {
    return { name, seconds: NaN, linesPerSec: NaN, skipped: (e as Error).message.split('\n')[0]! };
  }
}

export async function measureTraceDecode(lines = 2_000_000): Promise<TraceDecodeMeasurement> {
  const formatsPath = existsSync(defaultTraceEventsPath()) ? defaultTraceEventsPath() : join(FIX, 'trace-events-11.1.3-excerpt');
  const formats = await TraceFormats.load(formatsPath);
  const dir = mkdtempSync(join(tmpdir(), 'bench-trace-'));
  try {
    const file = join(dir, 'trace.log');
    const bytes = buildFile(file, lines);
    // One warm-up pass so both sides read a file in the page cache and V8 has optimized the parser.
    await parseTraceFile(file, formats, () => {});
    let records = 0;
    let diagnostics = 0;
    const t = process.hrtime.bigint();
    await parseTraceFile(file, formats, (p) => (p.kind === 'diagnostic' ? diagnostics++ : records++));
    const seconds = Number(process.hrtime.bigint() - t) / 1e9;
    const peers = [await python(file, lines), await grepCount(file, lines)];
    const linesPerSec = lines / seconds;
    const py = peers[0]!;
    return {
      name: 'trace decode (typed records)',
      lines, bytes, seconds, linesPerSec, records, diagnostics, peers,
      ratio: py.skipped ? null : linesPerSec / py.linesPerSec,
      target: TARGET,
      meetsTarget: linesPerSec >= TARGET,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchTraceDecode(lines = 2_000_000): Promise<BenchResult> {
  const r = await measureTraceDecode(lines);
  const rows: BenchResult['rows'] = [];
  const py = r.peers[0]!;
  const ours: BenchResult['rows'][number] = { what: r.name, value: r.linesPerSec / 1e6, unit: 'M lines/s' };
  if (r.ratio !== null) ours.ratio = { against: py.name, value: r.ratio, target: '≥1M lines/s absolute', met: r.meetsTarget };
  rows.push(ours);
  const notes = [`${r.lines} lines (${(r.bytes / 1e6).toFixed(0)} MB) from real captures; ${r.records} records, ${r.diagnostics} diagnostics`];
  for (const p of r.peers) {
    if (p.skipped) notes.push(`peer ${p.name} skipped: ${p.skipped}`);
    else rows.push({ what: `peer: ${p.name}`, value: p.linesPerSec / 1e6, unit: 'M lines/s' });
  }
  if (r.ratio === null) notes.push(`target ≥1M lines/s ${r.meetsTarget ? 'met' : 'NOT met'} (no python3 peer for a ratio)`);
  return { name: 'trace decode (same file, same run)', rows, notes };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const n = process.argv[2] ? Number(process.argv[2]) : undefined;
  const r = await benchTraceDecode(n);
  console.log(formatResult(r));
}
