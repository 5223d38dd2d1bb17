import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout's root, found from this file's place in dist/ or in the sources. */
export const repoRoot: string = (() => {
  const here = dirname(fileURLToPath(import.meta.url));
  // harness/util → root, or dist/harness/util → root
  const up = resolve(here, '..', '..');
  return up.endsWith('/dist') ? dirname(up) : up;
})();

/**
 * Expensive artifacts (QEMU, kernels, the Python peer) live outside the clone so
 * that a fresh clone reuses them. Same rule as scripts/lib/common.sh.
 */
export function cacheDir(): string {
  const env = process.env;
  if (env.HARNESS_CACHE_DIR) return env.HARNESS_CACHE_DIR;
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'viommu-harness');
}

/** The artifacts tree: every run's folder, the latest JUnit, bench results. */
export function artifactsRoot(): string {
  return process.env.HARNESS_ARTIFACTS ?? join(repoRoot, 'artifacts');
}

let runDir: string | undefined;

/**
 * This run's own folder, artifacts/runs/<UTC time>-<pid>: runs never clean or
 * overwrite each other's artifacts, even when two run at once in one checkout.
 * artifacts/latest points at the newest.
 */
export function runArtifactsDir(): string {
  if (!runDir) {
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
    runDir = join(artifactsRoot(), 'runs', `${stamp}-${process.pid}`);
  }
  return runDir;
}
