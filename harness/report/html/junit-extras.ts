/**
 * What junit.ts adds inside each <testcase> for CI systems: <properties>
 * (QEMU binary and version, accelerator, vIOMMU, kernel, host profile) and a
 * <system-out> with the artifact folder and one `[[ATTACHMENT|path]]` line
 * per artifact (Jenkins' attachments plugin and GitLab read these), paths
 * relative to the JUnit file itself so they resolve wherever CI unpacks it.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { release } from 'node:os';
import { basename, dirname, join, relative, sep } from 'node:path';
import type { TestResult } from '../junit.js';
import { artifactsRoot } from '../../util/paths.js';
import { parseCmdline, viommuOf } from './cmdline.js';

const xml = (s: string): string =>
  s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!).replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '');

let baseOverride: string | undefined;

/** The folder attachment paths are relative to: the JUnit file's (HARNESS_JUNIT, else artifacts/junit.xml). */
export function junitBase(): string {
  return baseOverride ?? dirname(process.env.HARNESS_JUNIT ?? join(artifactsRoot(), 'junit.xml'));
}

/** Runs `f` with attachment paths relative to `base` (for a copy of the JUnit file kept elsewhere). */
export function withJunitBase<T>(base: string, f: () => T): T {
  const before = baseOverride;
  baseOverride = base;
  try {
    return f();
  } finally {
    baseOverride = before;
  }
}

/** At most this many attachments per test: a CI page with hundreds of links helps nobody. */
const MAX_ATTACHMENTS = 60;

function filesOf(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      // A virtual-lab machine's artifacts/ is L1's whole run: its tests have their own entries.
      if (n === 'artifacts' && existsSync(join(d, 'cmdline.txt'))) continue;
      if (statSync(p).isDirectory()) walk(p);
      else out.push(p);
    }
  };
  walk(dir);
  return out;
}

/** QEMU facts from a test's machine folders: binary, version (QMP greeting), accelerator, vIOMMU. */
export function machineFacts(testDir: string): Array<[string, string]> {
  const props: Array<[string, string]> = [];
  for (const n of readdirSync(testDir).sort()) {
    const m = join(testDir, n);
    if (!existsSync(join(m, 'cmdline.txt'))) continue;
    try {
      const c = parseCmdline(readFileSync(join(m, 'cmdline.txt'), 'utf8'));
      if (c.binary) props.push([`${n}.qemu.binary`, c.binary]);
      props.push([`${n}.accelerator`, c.accel.join(',') || 'tcg']);
      const v = viommuOf(c.devices).config;
      props.push([`${n}.viommu`, v.kind === 'intel-iommu' ? `intel-iommu fsts=${v.fsts ? 'on' : 'off'} pasid-bits=${v.pasidBits}` : v.kind === 'arm-smmuv3' ? `arm-smmuv3 accel=${v.accel ? 'on' : 'off'} ssidsize=${v.ssidsize}` : 'none']);
    } catch {
      /* a cmdline.txt this reader does not follow: no properties from it */
    }
    try {
      const first = readFileSync(join(m, 'qmp.jsonl'), 'utf8').split('\n', 1)[0]!;
      const v = (JSON.parse(first) as { msg?: { QMP?: { version?: { qemu?: { major: number; minor: number; micro: number }; package?: string } } } }).msg?.QMP?.version;
      if (v?.qemu) props.push([`${n}.qemu.version`, `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}${v.package ? ` (${v.package})` : ''}`]);
    } catch {
      /* no transcript, or no greeting in it */
    }
  }
  return props;
}

/**
 * The text junit.ts puts inside a <testcase> after its verdict: properties
 * and system-out (each on its own indented line, starting with a newline).
 */
export function junitTestcaseExtras(r: TestResult): string {
  const props: Array<[string, string]> = [['kernel', release()]];
  if (process.env.HARNESS_HOST_PROFILE) props.push(['host.profile', basename(process.env.HARNESS_HOST_PROFILE).replace(/\.ya?ml$/, '')]);
  if (r.file) props.push(['file', r.file]);
  let out = '';
  let attachments: string[] = [];
  const dir = r.artifactsDir && existsSync(r.artifactsDir) ? r.artifactsDir : undefined;
  if (dir) {
    try {
      props.push(...machineFacts(dir));
      attachments = filesOf(dir).map((f) => relative(junitBase(), f).split(sep).join('/'));
    } catch {
      /* a folder that vanished under us: the artifacts line still names it */
    }
  }
  out += `\n      <properties>${props.map(([k, v]) => `\n        <property name="${xml(k)}" value="${xml(v)}"/>`).join('')}\n      </properties>`;
  if (r.artifactsDir) {
    const shown = attachments.slice(0, MAX_ATTACHMENTS);
    const more = attachments.length > shown.length ? `\n(${attachments.length - shown.length} more files in the folder)` : '';
    out += `\n      <system-out>artifacts: ${xml(r.artifactsDir)}${shown.map((a) => `\n[[ATTACHMENT|${xml(a)}]]`).join('')}${more}</system-out>`;
  }
  return out;
}
