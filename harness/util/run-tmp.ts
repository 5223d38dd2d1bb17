/**
 * Every temp folder of a process lives under one run folder,
 * $TMPDIR/viommu-harness-<pid>-<start>/ (0700): sockets need a short path, so
 * it is not under artifacts/. It goes at exit; what a killed process left is
 * swept by the next one that makes its own, only where the owner named in the
 * folder's name is dead (never another live run's).
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ownerAlive, selfOwner, type Owner } from './owner.js';

export const RUN_TMP_PREFIX = 'viommu-harness-';

let dir: string | undefined;

/** The owner a run folder's name gives ("viommu-harness-1234-5678"), or undefined for another name. */
export function runTmpOwner(name: string): Owner | undefined {
  const m = new RegExp(`^${RUN_TMP_PREFIX}(\\d+)-(\\d+|x)$`).exec(name);
  if (!m) return undefined;
  return m[2] === 'x' ? { pid: Number(m[1]) } : { pid: Number(m[1]), start: m[2]! };
}

/** Removes the run folders under `root` whose owner is dead; returns their paths. */
export function sweepRunTmpDirs(root = tmpdir()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return removed;
  }
  for (const n of names) {
    const o = runTmpOwner(n);
    if (!o || o.pid === process.pid || ownerAlive(o)) continue;
    rmSync(join(root, n), { recursive: true, force: true });
    removed.push(join(root, n));
  }
  return removed;
}

/** The temp folder a run was given, and the run folder its $TMPDIR then became (confineTmpdir). */
const SYSTEM_TMPDIR_ENV = 'HARNESS_SYSTEM_TMPDIR';
const CONFINED_TMPDIR_ENV = 'HARNESS_CONFINED_TMPDIR';

/**
 * Where run folders go: the temp folder the process was given. A child whose
 * $TMPDIR is still the run folder a parent run confined it to makes its own
 * beside the parent's, not inside it, so socket paths stay short (108 bytes);
 * a $TMPDIR set to anything else (a test giving its child a folder) is that.
 */
export function systemTmpdir(env: NodeJS.ProcessEnv = process.env): string {
  const confined = env[CONFINED_TMPDIR_ENV];
  return confined && env.TMPDIR === confined && env[SYSTEM_TMPDIR_ENV] ? env[SYSTEM_TMPDIR_ENV] : tmpdir();
}

/**
 * Points this process's $TMPDIR (os.tmpdir(), and its children's) at its run
 * folder: whatever a test or a tool makes there and forgets goes with the run
 * at exit, or with the next run's sweep after a kill, never left in /tmp.
 * Call before test files load (their describe bodies may make folders).
 */
export function confineTmpdir(): string {
  const system = systemTmpdir();
  const d = runTmpDir();
  process.env[SYSTEM_TMPDIR_ENV] = system;
  process.env.TMPDIR = d;
  process.env[CONFINED_TMPDIR_ENV] = d;
  return d;
}

/** This process's run folder (made, after sweeping dead runs' folders, on first use). */
export function runTmpDir(): string {
  if (dir) return dir;
  const root = systemTmpdir();
  const swept = sweepRunTmpDirs(root);
  if (swept.length) process.stderr.write(`harness: removed ${swept.length} temp folder(s) left by killed runs: ${swept.join(', ')}\n`);
  const o = selfOwner();
  const d = join(root, `${RUN_TMP_PREFIX}${o.pid}-${o.start ?? 'x'}`);
  mkdirSync(d, { recursive: true, mode: 0o700 });
  process.on('exit', () => rmSync(d, { recursive: true, force: true }));
  dir = d;
  return d;
}

/** A fresh private (0700) folder under the run folder. */
export function runTmpSubdir(prefix: string): string {
  return mkdtempSync(join(runTmpDir(), prefix));
}
