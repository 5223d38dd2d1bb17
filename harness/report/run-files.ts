/**
 * The files that say what the latest run was (artifacts/latest, the JUnit
 * XML): written for this run from its start, each replaced atomically, so a
 * run killed at any moment never leaves an older run's verdict standing as
 * its own.
 */
import { mkdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { artifactsRoot, runArtifactsDir } from '../util/paths.js';
import { junitXml } from './junit.js';

/** Where the JUnit XML goes: $HARNESS_JUNIT, else artifacts/junit.xml. */
export function junitPath(): string {
  return process.env.HARNESS_JUNIT ?? join(artifactsRoot(), 'junit.xml');
}

/** Writes `path` whole or not at all (a temp file beside it, then rename). */
export function writeFileAtomic(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    writeFileSync(tmp, text);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Points artifacts/latest at `dir` in one rename (a file system without symlinks keeps no link). */
export function pointLatestAt(dir: string): void {
  const root = artifactsRoot();
  const tmp = join(root, `.latest.${process.pid}.tmp`);
  rmSync(tmp, { force: true });
  try {
    symlinkSync(join('runs', basename(dir)), tmp);
  } catch {
    return; // 9p in L1: the run folder is still there
  }
  renameSync(tmp, join(root, 'latest'));
}

/** What a JUnit reader sees while the run goes on, or after it was killed before writing its own. */
export function unfinishedJunit(): string {
  return junitXml([
    {
      suite: '(run)',
      title: 'the run finished',
      state: 'failed',
      durationMs: 0,
      error: `harness run (pid ${process.pid}, started ${new Date().toISOString()}, folder ${runArtifactsDir()}) has not written its results: it is still running, or it was killed`,
    },
  ]);
}

/**
 * Before any test: this run's folder, `latest` pointing at it, and a JUnit
 * that fails until the run writes its own. A path that cannot be written is
 * thrown as an error naming it.
 */
export function startRunFiles(): void {
  const junit = junitPath();
  const isDir = (() => {
    try {
      return statSync(junit).isDirectory();
    } catch {
      return false;
    }
  })();
  if (isDir) throw new Error(`the JUnit path ${junit} is a directory (give a file path, e.g. ${join(junit, 'junit.xml')})`);
  const step = (what: string, path: string, f: () => void): void => {
    try {
      f();
    } catch (e) {
      throw new Error(`cannot write ${what} ${path}: ${(e as Error).message}`);
    }
  };
  const dir = runArtifactsDir();
  step('the run folder', dir, () => mkdirSync(dir, { recursive: true }));
  step('the JUnit XML', junit, () => writeFileAtomic(junit, unfinishedJunit()));
  if (!process.env.HARNESS_JUNIT) step('the run folder\'s JUnit XML', join(dir, 'junit.xml'), () => writeFileAtomic(join(dir, 'junit.xml'), unfinishedJunit()));
  step('the latest link', join(artifactsRoot(), 'latest'), () => pointLatestAt(dir));
}
