import { junitTestcaseExtras } from './html/junit-extras.js';

/** One finished test, as the reporters see it. */
export interface TestResult {
  suite: string;
  title: string;
  state: 'passed' | 'failed' | 'skipped';
  durationMs: number;
  error?: string;
  skipReason?: string;
  artifactsDir?: string;
  /** The test file that defines it (lets the virtual lab tell a missing suite file from a crash). */
  file?: string;
  /** When it started (ISO 8601, UTC): JUnit's timestamp. */
  startedAt?: string;
}

const xmlEscape = (s: string): string =>
  s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!)
    // XML 1.0 cannot carry most control characters, even escaped.
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);

/** JUnit XML as CI systems read it: one <testsuite> per suite, skips with their reason. */
export function junitXml(results: readonly TestResult[], name = 'viommu-harness'): string {
  const bySuite = new Map<string, TestResult[]>();
  for (const r of results) bySuite.set(r.suite, [...(bySuite.get(r.suite) ?? []), r]);
  const count = (rs: readonly TestResult[], s: TestResult['state']) => rs.filter((r) => r.state === s).length;
  const secs = (rs: readonly TestResult[]) => (rs.reduce((a, r) => a + r.durationMs, 0) / 1000).toFixed(3);
  const out = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="${xmlEscape(name)}" tests="${results.length}" failures="${count(results, 'failed')}" skipped="${count(results, 'skipped')}" time="${secs(results)}">`,
  ];
  for (const [suite, rs] of bySuite) {
    // JUnit's timestamp has no zone and no fraction (the XSD's ISO8601_DATETIME_PATTERN): UTC, seconds.
    const first = rs.map((r) => r.startedAt).filter((t): t is string => Boolean(t)).sort()[0];
    const stamp = first ? ` timestamp="${first.slice(0, 19)}"` : '';
    out.push(`  <testsuite name="${xmlEscape(suite)}" tests="${rs.length}" failures="${count(rs, 'failed')}" skipped="${count(rs, 'skipped')}" time="${secs(rs)}"${stamp}>`);
    for (const r of rs) {
      const file = r.file ? ` file="${xmlEscape(r.file)}"` : '';
      const head = `    <testcase classname="${xmlEscape(suite)}" name="${xmlEscape(r.title)}" time="${(r.durationMs / 1000).toFixed(3)}"${file}`;
      // Properties and [[ATTACHMENT|...]] lines for CI systems: harness/report/html/junit-extras.ts.
      const artifacts = junitTestcaseExtras(r);
      if (r.state === 'passed') out.push(`${head}>${artifacts}${artifacts ? '\n    ' : ''}</testcase>`);
      else if (r.state === 'skipped')
        out.push(`${head}>\n      <skipped message="${xmlEscape(r.skipReason ?? 'skipped')}"/>${artifacts}\n    </testcase>`);
      else {
        const first = (r.error ?? '').split('\n')[0] ?? '';
        out.push(`${head}>\n      <failure message="${xmlEscape(first)}">${xmlEscape(r.error ?? '')}</failure>${artifacts}\n    </testcase>`);
      }
    }
    out.push('  </testsuite>');
  }
  out.push('</testsuites>', '');
  return out.join('\n');
}

/** Skips grouped by reason, most frequent first. */
export function skipsByReason(results: readonly TestResult[]): Array<{ reason: string; count: number }> {
  const m = new Map<string, number>();
  for (const r of results) if (r.state === 'skipped') m.set(r.skipReason ?? '(no reason given)', (m.get(r.skipReason ?? '(no reason given)') ?? 0) + 1);
  return [...m].map(([reason, count]) => ({ reason, count })).sort((a, b) => b.count - a.count || a.reason.localeCompare(b.reason));
}

/** The closing lines: skips per reason, then "N passed, N failed, N skipped". */
export function summaryText(results: readonly TestResult[]): string {
  const n = (s: TestResult['state']) => results.filter((r) => r.state === s).length;
  const lines: string[] = [];
  const skips = skipsByReason(results);
  if (skips.length) {
    lines.push('Skipped, by reason:');
    for (const s of skips) lines.push(`  ${String(s.count).padStart(3)}  ${s.reason}`);
  }
  const failed = results.filter((r) => r.state === 'failed' && r.artifactsDir);
  if (failed.length) {
    lines.push('Artifacts of failed tests:');
    for (const r of failed) lines.push(`  ${r.suite} › ${r.title}: ${r.artifactsDir}`);
  }
  lines.push(`${n('passed')} passed, ${n('failed')} failed, ${n('skipped')} skipped`);
  return lines.join('\n');
}
