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

/** Where a run's artifacts go: one folder per test below it. */
export function artifactsRoot(): string {
  return process.env.HARNESS_ARTIFACTS ?? join(repoRoot, 'artifacts');
}
