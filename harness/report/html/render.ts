/**
 * The run report as one static HTML page: inline CSS and JS, links relative
 * to the page's folder, nothing fetched, so it opens from disk or from a CI
 * system's artifact browser alike.
 */
import { createHash } from 'node:crypto';
import { sep } from 'node:path';
import { skipsByReason, type TestResult } from '../junit.js';
import { L1_PREFIX } from '../../lab/l1-results.js';
import { resultKey } from '../../testing/test-list.js';
import { formatHwptFlags } from '../../trace/flags.js';
import { allRuns, type MachineView, type RunView, type TestView } from './run-folder.js';
import type { Entry } from './timeline.js';

export const esc = (s: unknown): string =>
  String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** A relative path as a link target: each segment escaped, so spaces and '#' survive. */
export const href = (rel: string): string => rel.split(sep).map(encodeURIComponent).join('/');

/** A test's anchor: by its folder where it has one (L0's copy of an L1 result shares it), else by run and title. */
const anchor = (run: RunView, title: string, rel?: string): string => `t-${createHash('sha1').update(rel ? `d|${rel}` : `${run.rel}|${title}`).digest('hex').slice(0, 12)}`;

/**
 * L0's entry for an L1 test ("L1 › suite › title", harness/lab/l1-results.ts)
 * whose L1 result is in a nested run of this report: shown once, in L1's run.
 */
function mirrorOf(t: TestView, nested: readonly RunView[]): { run: RunView; test: TestView } | undefined {
  const title = t.result?.title;
  if (!title?.startsWith(L1_PREFIX)) return undefined;
  const key = title.slice(L1_PREFIX.length);
  for (const run of nested) {
    const test = run.tests.find((x) => x.result && resultKey(x.result) === key);
    if (test) return { run, test };
  }
  return undefined;
}

const STATE_ORDER: Record<TestResult['state'], number> = { failed: 0, skipped: 1, passed: 2 };

const ms = (n: number): string => (n < 1000 ? `${n} ms` : `${(n / 1000).toFixed(1)} s`);

const CSS = `
:root{--fail:#b3261e;--ok:#1e7a3a;--skip:#8a6d00;--muted:#666;--bg:#fafafa;--line:#ddd}
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:0 1.5em 3em;background:#fff;color:#111}
h1{font-size:1.4em;margin:.8em 0 .3em} h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid var(--line)} h3{font-size:1em;margin:.8em 0 .3em}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:var(--bg);border:1px solid var(--line);padding:.5em;overflow:auto;max-height:24em;white-space:pre-wrap}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;vertical-align:top}
.summary td:first-child{color:var(--muted)}
.counts span{display:inline-block;margin-right:1.2em;font-weight:600}
.failed,.fail{color:var(--fail)} .passed,.ok{color:var(--ok)} .skipped{color:var(--skip)}
details.test{border:1px solid var(--line);border-left:5px solid var(--line);margin:.4em 0;padding:.2em .6em;background:#fff}
details.test.s-failed{border-left-color:var(--fail)} details.test.s-passed{border-left-color:var(--ok)} details.test.s-skipped{border-left-color:var(--skip)}
details.test>summary{cursor:pointer;font-weight:600}
.badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11.5px;font-weight:600;color:#fff;background:#777;margin-right:4px}
.badge.failed{background:var(--fail)} .badge.passed{background:var(--ok)} .badge.skipped{background:var(--skip)}
.src{display:inline-block;min-width:4.6em;border-radius:3px;padding:0 4px;font-size:11.5px;text-align:center;color:#fff}
.src.qmp{background:#3367d6} .src.trace{background:#7b1fa2} .src.kernel{background:#00796b} .src.stderr{background:#c15b00} .src.console{background:#555}
table.timeline{width:100%;margin:.3em 0} table.timeline td{border-top:1px solid #eee;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
table.timeline td.time{white-space:nowrap;color:var(--muted);text-align:right}
tr.fail td.text{color:var(--fail);font-weight:600} tr.ok td.text{color:var(--ok)} tr.minor{color:#888}
body.hide-minor tr.minor{display:none}
.oracle{display:block;font-weight:400;font-size:12px;margin-top:1px}
.oracle.match{color:var(--ok)} .oracle.mismatch{color:var(--fail);font-weight:600}
.note{color:var(--muted);font-size:12.5px}
.run.nested{border:2px solid #9ab;border-radius:6px;padding:.2em 1em;margin:1.5em 0;background:#fcfdff}
.toolbar{background:#fff;padding:.4em 0;border-bottom:1px solid var(--line);z-index:1}
.toolbar input[type=search]{width:22em}
ul.files{columns:2;font-size:12.5px} a{color:#1a56b8}
.hidden{display:none}
svg.axis{display:block;max-width:1000px;margin:.2em 0 .4em;font-family:system-ui,sans-serif}
`;

const JS = `
(function(){
  var q=document.getElementById('filter');
  q&&q.addEventListener('input',function(){var v=q.value.toLowerCase();
    document.querySelectorAll('details.test').forEach(function(d){d.classList.toggle('hidden',v!==''&&d.getAttribute('data-title').indexOf(v)<0);});});
  var m=document.getElementById('minor');
  m&&m.addEventListener('change',function(){document.body.classList.toggle('hide-minor',!m.checked);});
  document.getElementById('expand').addEventListener('click',function(){document.querySelectorAll('details.test').forEach(function(d){d.open=true;});});
  document.getElementById('collapse').addEventListener('click',function(){document.querySelectorAll('details.test').forEach(function(d){d.open=false;});});
  if(location.hash){var t=document.getElementById(location.hash.slice(1));if(t&&t.tagName==='DETAILS')t.open=true;}
})();
`;

function stateOf(t: TestView): TestResult['state'] | 'artifacts' {
  return t.result?.state ?? 'artifacts';
}

function machineRows(m: MachineView): string {
  const c = m.cmdline;
  const v = m.viommu?.config;
  const viommu = !v ? '' : v.kind === 'none' ? 'none' : v.kind === 'intel-iommu' ? `intel-iommu fsts=${v.fsts ? 'on' : 'off'} pasid-bits=${v.pasidBits}` : `arm-smmuv3 accel=${v.accel ? 'on' : 'off'} ssidsize=${v.ssidsize}`;
  const rows = [
    ['QEMU', `${c?.binary ? `<code>${esc(c.binary)}</code>` : '?'}${m.qemu ? ` — ${esc(m.qemu.version)}${m.qemu.package ? ` (${esc(m.qemu.package)})` : ''}` : ''}`],
    ['accelerator', esc(c?.accel.join(', ') || (c ? 'tcg (QEMU default)' : '?'))],
    ['vIOMMU', `${esc(viommu)}${m.viommu?.note ? ` <span class="note">${esc(m.viommu.note)}</span>` : ''}`],
    ['exit', esc(m.exit?.text ?? '(no exit.json)')],
    ...(m.formats ? [['trace formats', `<span class="note">${esc(m.formats)}</span>`]] : []),
  ];
  return `<h3>machine ${esc(m.name)} <a class="note" href="${href(m.rel)}">${esc(m.rel)}/</a></h3><table class="summary">${rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join('')}</table>`;
}

function entryRow(e: Entry, t0: number | undefined): string {
  const time = e.t !== undefined && t0 !== undefined ? `+${(e.t - t0).toFixed(3)} ms` : esc(e.ownClock ?? '—');
  const title = e.t !== undefined ? new Date(e.t).toISOString() : (e.ownClock ?? 'no time');
  const oracle = e.oracle ? `<span class="oracle ${e.oracle.match ? 'match' : 'mismatch'}">${e.oracle.match ? '✓ as the oracle expects' : '✗ unlike the oracle'} — ${esc(e.oracle.text)}</span>` : '';
  return `<tr class="${e.level}${e.oracle && !e.oracle.match ? ' fail' : ''}" data-source="${e.source}"><td class="time" title="${esc(title)}">${time}</td><td><span class="src ${e.source}">${e.source}</span></td><td>${esc(e.machine)}</td><td class="text">${esc(e.text)}${oracle}</td><td><a href="${href(e.file)}" title="${esc(e.raw)}">${esc(e.file.split(sep).pop())}:${e.line}</a></td></tr>`;
}

const MAX_ROWS = 3000;
const LANES: Entry['source'][] = ['qmp', 'trace', 'kernel', 'stderr'];
const LANE_COLOR: Record<string, string> = { qmp: '#3367d6', trace: '#7b1fa2', kernel: '#00796b', stderr: '#c15b00' };

/** The placed entries as marks on one horizontal axis, a lane per source (hover: the line; red: a failure). */
function axisStrip(placed: readonly Entry[]): string {
  if (placed.length < 2) return '';
  const t0 = placed[0]!.t!;
  const span = Math.max(placed.at(-1)!.t! - t0, 1);
  const lanes = LANES.filter((l) => placed.some((e) => e.source === l));
  const W = 1000;
  const x = (t: number) => 70 + ((t - t0) / span) * (W - 80);
  const marks = placed
    .filter((e) => e.level !== 'minor')
    .map((e) => {
      const y = 8 + lanes.indexOf(e.source) * 16;
      const fill = e.level === 'fail' || (e.oracle && !e.oracle.match) ? '#b3261e' : LANE_COLOR[e.source];
      return `<rect x="${x(e.t!).toFixed(1)}" y="${y}" width="3" height="12" fill="${fill}"><title>+${(e.t! - t0).toFixed(3)} ms ${esc(e.source)}: ${esc(e.text)}</title></rect>`;
    });
  const labels = lanes.map((l, i) => `<text x="0" y="${18 + i * 16}" font-size="11" fill="${LANE_COLOR[l]}">${l}</text>`);
  const h = 12 + lanes.length * 16;
  return `<svg class="axis" viewBox="0 0 ${W} ${h + 14}" width="100%" role="img" aria-label="timeline axis">${labels.join('')}${marks.join('')}<line x1="70" y1="${h}" x2="${W - 10}" y2="${h}" stroke="#999"/><text x="70" y="${h + 12}" font-size="10" fill="#666">+0 ms</text><text x="${W - 10}" y="${h + 12}" font-size="10" fill="#666" text-anchor="end">+${span.toFixed(1)} ms</text></svg>`;
}

function timeline(t: TestView): string {
  if (!t.placed.length && !t.unplaced.length) return '<p class="note">No timeline: this test left no QMP transcript, trace, kernel records or console.</p>';
  const t0 = t.placed[0]?.t;
  const shown = t.placed.slice(0, MAX_ROWS);
  const out = [
    `<h3>Timeline <span class="note">(one wall-clock axis; +ms from ${t0 !== undefined ? esc(new Date(t0).toISOString()) : '—'})</span></h3>`,
    axisStrip(t.placed),
    shown.length ? `<table class="timeline"><tbody>${shown.map((e) => entryRow(e, t0)).join('')}</tbody></table>` : '<p class="note">No source of this test could be placed on the wall clock.</p>',
    t.placed.length > MAX_ROWS ? `<p class="note">… ${t.placed.length - MAX_ROWS} more entries: see the files.</p>` : '',
    `<h3>How each source was placed</h3><ul>${t.placements.map((p) => `<li><span class="src ${p.source}">${p.source}</span> <a href="${href(p.file)}">${esc(t.rel && p.file.startsWith(t.rel + sep) ? p.file.slice(t.rel.length + 1) : p.file)}</a>: <span class="${p.placed || p.how === 'empty' ? '' : 'fail'}">${esc(p.how)}</span></li>`).join('')}</ul>`,
  ];
  if (t.unplaced.length) {
    const un = t.unplaced.slice(0, MAX_ROWS);
    out.push(`<h3>Not on the time axis</h3><p class="note">These lines carry no time on the run's wall clock (see above why); shown in file order, with their own clock where they have one.</p>`);
    out.push(`<table class="timeline"><tbody>${un.map((e) => entryRow(e, undefined)).join('')}</tbody></table>`);
  }
  return out.join('\n');
}

/** The model in one line: requests, refusals, what was left allocated. */
function modelLine(m: MachineView): string {
  const model = m.model!;
  const live = model.liveObjects();
  const failed = model.failures().length;
  const parts = [
    `${model.hwptAllocs.length} HWPT request${model.hwptAllocs.length === 1 ? '' : 's'}`,
    `${failed} failed request${failed === 1 ? '' : 's'}`,
    `${model.attaches.length} attach${model.attaches.length === 1 ? '' : 'es'}`,
    live.length ? `<span class="fail">left allocated at the end: ${live.map((o) => `${o.kind} ${o.id}`).join(', ')}</span>` : 'nothing left allocated',
    ...(model.anomalies.length ? [`<span class="fail">${model.anomalies.length} anomalies (model.json)</span>`] : []),
  ];
  return `<p>iommufd model of ${esc(m.name)}: ${parts.join(' · ')}</p>`;
}

function oracleBlock(t: TestView): string {
  if (!t.oracle.length) return '';
  return `<h3>Oracle</h3><ul>${t.oracle
    .map((o) => {
      const p = o.expectation?.parent;
      const what = o.expectation ? (p ? `expects flags=${formatHwptFlags(p.flags)} (${esc(p.because)})` : 'expects no request (an existing HWPT is reused)') : '';
      return `<li><code>${esc(o.bdf)}</code> ${what} <span class="note">${esc(o.note)}</span></li>`;
    })
    .join('')}</ul>`;
}

function testBlock(run: RunView, t: TestView, nested: readonly RunView[] = []): string {
  const st = stateOf(t);
  const r = t.result;
  const mirror = mirrorOf(t, nested);
  const id = anchor(run, t.title, t.rel) + (mirror ? '-l0' : '');
  const head = `<span class="badge ${st}">${st}</span>${esc(t.title)}${r ? ` <span class="note">${ms(r.durationMs)}</span>` : ''}`;
  if (mirror) {
    const where = `<a href="#${anchor(mirror.run, mirror.test.title, mirror.test.rel)}">in L1's run below</a>`;
    return `<details class="test s-${st}" id="${id}" data-title="${esc(t.title.toLowerCase())}"><summary>${head}</summary><p>L1's result, with its timeline and artifacts: ${where}.</p>${r?.state === 'failed' ? `<pre class="error">${esc(r.error ?? '')}</pre>` : ''}</details>`;
  }
  const body: string[] = [];
  if (r?.state === 'failed') body.push(`<pre class="error">${esc(r.error ?? '(no message)')}</pre>`);
  if (r?.state === 'skipped') body.push(`<p class="skipped">skipped: ${esc(r.skipReason)}</p>`);
  if (r?.file) body.push(`<p class="note">defined in <code>${esc(r.file)}</code></p>`);
  if (t.missing) body.push(`<p class="fail">artifacts: ${esc(t.missing)}</p>`);
  else if (!t.rel) body.push('<p class="note">No artifact folder: this test launched no machine.</p>');
  else {
    const extra = ['model.json', 'failure.txt'].filter((n) => t.files.some((f) => f.endsWith(`${sep}${n}`))).map((n) => `<a href="${href(`${t.rel}${sep}${n}`)}">${n}</a>`);
    body.push(`<p>folder <a href="${href(t.rel)}/">${esc(t.rel)}/</a>${extra.length ? ` · ${extra.join(' · ')}` : ''}</p>`);
  }
  for (const m of t.machines) {
    body.push(machineRows(m));
    if (m.nested) body.push(`<p>This machine ran a harness run of its own (the virtual lab's L1): <a href="#${runAnchor(m.nested)}">its tests below</a>.</p>`);
  }
  body.push(oracleBlock(t));
  for (const m of t.machines.filter((x) => x.model)) body.push(modelLine(m));
  if (t.rel) body.push(timeline(t));
  if (t.files.length) body.push(`<h3>Artifacts (${t.files.length})</h3><ul class="files">${t.files.map((f) => `<li><a href="${href(f)}">${esc(t.rel ? f.slice(t.rel.length + 1) : f)}</a></li>`).join('')}</ul>`);
  return `<details class="test s-${st}" id="${id}" data-title="${esc(t.title.toLowerCase())}"${st === 'failed' ? ' open' : ''}><summary>${head}</summary>${body.join('\n')}</details>`;
}

const runAnchor = (run: RunView): string => `run-${createHash('sha1').update(run.rel || '.').digest('hex').slice(0, 10)}`;

function distinct<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}

function runSummary(run: RunView): string {
  const n = (s: TestResult['state']) => run.results.filter((r) => r.state === s).length;
  const machines = [...run.tests, ...run.others].flatMap((t) => t.machines);
  const qemus = distinct(machines.filter((m) => m.cmdline?.binary).map((m) => `${m.cmdline!.binary}${m.qemu ? ` — QEMU ${m.qemu.version}${m.qemu.package ? ` (${m.qemu.package})` : ''}` : ''}`));
  const accels = distinct(machines.flatMap((m) => (m.cmdline ? (m.cmdline.accel.length ? m.cmdline.accel : ['tcg (default)']) : [])));
  const info = run.info ?? {};
  const host = [
    info.hostname ? `${String(info.hostname)}` : '',
    info.kernel ? `kernel ${String(info.kernel)}` : '',
    info.arch ? String(info.arch) : '',
    info.hostProfile ? `host profile ${String(info.hostProfile)}` : '',
  ].filter(Boolean);
  const hosts = run.hosts.map((h) => `${[h.kernel && `kernel ${h.kernel}`, h.arch, h.profile && `host profile ${h.profile}`].filter(Boolean).join(', ')} <span class="note">(<a href="${href(h.file)}">doctor.json</a>)</span>`);
  const skips = skipsByReason(run.results);
  const rows: Array<[string, string]> = [
    ['QEMU', qemus.length ? qemus.map((q) => `<code>${esc(q)}</code>`).join('<br>') : '<span class="note">no machine in this run left a command line</span>'],
    ['accelerator', accels.length ? esc(accels.join(', ')) : '<span class="note">unknown</span>'],
    ['host', host.length ? esc(host.join(', ')) : hosts.length ? hosts.join('<br>') : '<span class="note">not recorded in this folder (run-info.json is written when the report is built at the end of the run)</span>'],
    ...(host.length && hosts.length ? [['lab host', hosts.join('<br>')] as [string, string]] : []),
    ['results', run.resultsFile ? `<a href="${href(run.resultsFile)}">${esc(run.resultsFile)}</a>${run.partial ? ' <span class="fail">(streamed as tests finished: the run stopped before writing results.json)</span>' : ''}` : '<span class="fail">no results.json: the run did not finish (or is still going)</span>'],
  ];
  return [
    `<p class="counts"><span class="passed">${n('passed')} passed</span><span class="failed">${n('failed')} failed</span><span class="skipped">${n('skipped')} skipped</span></p>`,
    `<table class="summary">${rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join('')}</table>`,
    skips.length ? `<h3>Skipped, by reason</h3><table>${skips.map((s) => `<tr><td class="skipped">${s.count}</td><td>${esc(s.reason)}</td></tr>`).join('')}</table>` : '',
  ].join('\n');
}

function runBody(run: RunView): string {
  const nested = allRuns(run).slice(1);
  const tests = [...run.tests].sort((a, b) => STATE_ORDER[a.result!.state] - STATE_ORDER[b.result!.state]);
  const group = (s: TestResult['state'], title: string) => {
    const ts = tests.filter((t) => t.result!.state === s);
    return ts.length ? `<h2>${title} (${ts.length})</h2>${ts.map((t) => testBlock(run, t, nested)).join('\n')}` : '';
  };
  return [
    runSummary(run),
    group('failed', 'Failed'),
    run.others.length ? `<h2>Machines of a whole suite (${run.others.length})</h2>${run.others.map((t) => testBlock(run, t)).join('\n')}` : '',
    group('skipped', 'Skipped'),
    group('passed', 'Passed'),
  ].join('\n');
}

/** The page for `root` and every L1 run inside it. */
export function renderReport(root: RunView, title: string): string {
  const runs = allRuns(root);
  // Each failure once: L0's copy of an L1 result points at L1's.
  const failures = runs.flatMap((r) => r.tests.filter((t) => t.result?.state === 'failed' && !mirrorOf(t, allRuns(r).slice(1))).map((t) => ({ r, t })));
  const index = failures.length
    ? `<h2 class="failed">Failures first (${failures.length}, every run)</h2><ol>${failures.map(({ r, t }) => `<li><a href="#${anchor(r, t.title, t.rel)}">${esc(t.title)}</a>${r === root ? '' : ' <span class="note">(L1)</span>'}</li>`).join('')}</ol>`
    : '<h2 class="passed">No test failed</h2>';
  const nested = runs.slice(1).map((r) => `<section class="run nested" id="${runAnchor(r)}"><h2>Virtual lab L1 run: <a href="${href(r.rel)}/">${esc(r.rel)}</a></h2>${runBody(r)}</section>`);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>${CSS}</style></head>
<body class="hide-minor">
<h1>${esc(title)}</h1>
<div class="toolbar"><input id="filter" type="search" placeholder="filter tests by title"> <label><input id="minor" type="checkbox"> show DMA map/unmap and other minor lines</label> <button id="expand">expand all</button> <button id="collapse">collapse all</button></div>
<section class="run" id="${runAnchor(root)}">
${index}
${runBody(root)}
</section>
${nested.join('\n')}
<script>${JS}</script>
</body></html>
`;
}
