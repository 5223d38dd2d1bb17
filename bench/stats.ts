/** Small statistics for benches: medians and percentiles, never a single run. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.round((p / 100) * (s.length - 1))))]!;
}

export const median = (xs: readonly number[]): number => percentile(xs, 50);

export interface BenchRow {
  what: string;
  value: number;
  unit: string;
  /** value / peer value, with the peer named. */
  ratio?: { against: string; value: number; target?: string; met?: boolean };
}

export interface BenchResult {
  name: string;
  rows: BenchRow[];
  notes?: string[];
}

export function formatResult(r: BenchResult): string {
  const lines = [`== ${r.name}`];
  const w = Math.max(...r.rows.map((x) => x.what.length));
  for (const row of r.rows) {
    const v = `${row.value < 10 ? row.value.toFixed(3) : row.value.toFixed(1)} ${row.unit}`;
    const ratio = row.ratio
      ? `  ${row.ratio.value.toFixed(3)}x ${row.ratio.against}${row.ratio.target ? ` (target ${row.ratio.target}: ${row.ratio.met ? 'met' : 'NOT met'})` : ''}`
      : '';
    lines.push(`  ${row.what.padEnd(w)}  ${v.padStart(14)}${ratio}`);
  }
  for (const n of r.notes ?? []) lines.push(`  note: ${n}`);
  return lines.join('\n');
}
