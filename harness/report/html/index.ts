/**
 * `buildRunReport(runDir)`: the run folder → report.html beside it, and per
 * test the joined iommufd model (model.json) and, for a failure, failure.txt
 * (message and artifact list), written into the test's folder. Everything is
 * read from the folder (run-folder.ts), so no test has to write any of it and
 * a copied folder gives the same page.
 *
 * Synchronous on purpose: the reporter calls it at the end of a run, and
 * with mocha's --exit the process ends right after the run's end event.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { arch, hostname, release } from 'node:os';
import { basename, join, relative, sep } from 'node:path';
import { junitXml, type TestResult } from '../junit.js';
import { withJunitBase } from './junit-extras.js';
import type { IommufdModel } from '../../trace/model.js';
import { renderReport } from './render.js';
import { allRuns, joinOracles, readRun, type BuildOptions, type RunView, type TestView } from './run-folder.js';

export type { BuildOptions } from './run-folder.js';
export const REPORT_FILE = 'report.html';

/** The model's public state as JSON: bigints as decimal strings, Maps as objects. */
export function modelJson(model: IommufdModel): Record<string, unknown> {
  return {
    objects: model.objects,
    liveObjects: model.liveObjects(),
    hwptAllocs: model.hwptAllocs,
    binds: model.binds,
    attaches: model.attaches,
    detaches: model.detaches,
    vtd: model.vtd,
    viommus: model.viommus,
    vdevices: model.vdevices,
    veventqs: model.veventqs,
    frees: model.frees,
    unmatchedFrees: model.unmatchedFrees,
    dirty: model.dirty,
    invalidations: model.invalidations,
    maps: model.maps,
    retries: model.retries,
    smmuDevices: model.smmuDevices,
    smmuSte: model.smmuSte,
    pasidCaps: model.pasidCaps,
    qemuMessages: model.qemuMessages,
    kernel: model.kernel,
    failures: model.failures(),
    anomalies: model.anomalies,
    diagnostics: model.diagnostics,
  };
}

const replacer = (_k: string, v: unknown): unknown => (typeof v === 'bigint' ? v.toString() : v instanceof Map ? Object.fromEntries(v) : v);

function writeTestFiles(t: TestView, reportDir: string): void {
  if (!t.rel) return;
  const dir = join(reportDir, t.rel);
  const models = t.machines.filter((m) => m.model);
  if (models.length) {
    const doc = {
      test: t.title,
      state: t.result?.state ?? null,
      machines: Object.fromEntries(models.map((m) => [m.name, { formats: m.formats, qemu: m.qemu ?? null, model: modelJson(m.model!) }])),
      kernel: t.kernel ? { records: t.kernel.records, requestsWithoutAnswer: t.kernel.join?.requestsWithoutAnswer.map((r) => r.record.line) ?? null, answersWithoutRequest: t.kernel.join?.answersWithoutRequest.map((k) => k.line) ?? null } : null,
      oracle: t.oracle,
    };
    writeFileSync(join(dir, 'model.json'), `${JSON.stringify(doc, replacer, 1)}\n`);
    if (!t.files.includes(join(t.rel, 'model.json'))) t.files.push(join(t.rel, 'model.json'));
  }
  if (t.result?.state === 'failed') {
    const list = t.files.filter((f) => !f.endsWith(`${sep}failure.txt`)).map((f) => `  ${f.slice(t.rel!.length + 1)}`);
    const text = `${t.title}\n\n${t.result.error ?? '(no message)'}\n\nartifacts (in ${dir}):\n${list.join('\n') || '  (none)'}\n`;
    writeFileSync(join(dir, 'failure.txt'), text);
    if (!t.files.includes(join(t.rel, 'failure.txt'))) t.files.push(join(t.rel, 'failure.txt'));
  }
}

export interface BuiltReport {
  path: string;
  run: RunView;
}

/** Builds report.html for a run folder (and writes each test's model.json and failure.txt). */
export function buildRunReport(runDir: string, opts: BuildOptions = {}): BuiltReport {
  if (!existsSync(runDir)) throw new Error(`run folder ${runDir} does not exist`);
  if (!existsSync(join(runDir, 'results.json')) && !existsSync(join(runDir, 'tests'))) throw new Error(`${runDir} is not a run folder: no results.json and no tests/`);
  const run = readRun(runDir, runDir, opts);
  joinOracles(run, runDir);
  for (const r of allRuns(run)) for (const t of [...r.tests, ...r.others]) writeTestFiles(t, runDir);
  const path = join(runDir, REPORT_FILE);
  writeFileSync(path, renderReport(run, `viommu-harness run ${basename(runDir)}`));
  return { path, run };
}

/** What only the running process knows about its host: kept in the run folder for later reports. */
export function writeRunInfo(runDir: string): void {
  const info = {
    hostname: hostname(),
    kernel: release(),
    arch: arch(),
    node: process.version,
    hostProfile: process.env.HARNESS_HOST_PROFILE ? basename(process.env.HARNESS_HOST_PROFILE).replace(/\.ya?ml$/, '') : null,
    virtualLab: process.env.HARNESS_VIRTUAL_LAB === '1',
    writtenAt: new Date().toISOString(),
  };
  writeFileSync(join(runDir, 'run-info.json'), `${JSON.stringify(info, null, 1)}\n`);
}

/**
 * The end of a run (the reporter's hook): run-info.json, then the report. A
 * run inside the virtual lab's L1 builds none (L0's report reads L1's folder,
 * on a faster CPU). Never throws: a report that cannot be built must not
 * change the run's outcome; the line says why instead.
 */
export function reportAtRunEnd(runDir: string, results?: readonly TestResult[]): string {
  try {
    if (!existsSync(runDir)) return 'Report: none (this run wrote no folder)';
    writeRunInfo(runDir);
    // The run folder's copy of the JUnit file, with ATTACHMENT paths relative to it (the copy
    // the reporter wrote has them relative to artifacts/junit.xml).
    if (results && !process.env.HARNESS_JUNIT && existsSync(join(runDir, 'junit.xml'))) writeFileSync(join(runDir, 'junit.xml'), withJunitBase(runDir, () => junitXml(results)));
    if (process.env.HARNESS_VIRTUAL_LAB === '1') return "Report: built by L0's run (this is the virtual lab's L1)";
    const { path } = buildRunReport(runDir);
    return `Report: ${relative(process.cwd(), path).startsWith('..') ? path : relative(process.cwd(), path)}`;
  } catch (e) {
    return `Report: could not be built: ${(e as Error).message}`;
  }
}
