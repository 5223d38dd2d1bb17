import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir, repoRoot } from './paths.js';

/**
 * The harness's native helpers (images/tools/NAME.c), built by
 * scripts/build-tools.sh into cacheDir()/tools/<machine>/<source hash>/NAME.
 * The machine (`uname -m`: x86_64, aarch64) is part of the path because the
 * virtual lab's L1 shares L0's cache: an arm64 L1 must never run an x86
 * binary, and a changed source gets a new folder.
 */
export type NativeTool = 'iommufd-probe' | 'pdeathsig-exec';

/** `uname -m` spelling of the machine Node runs on. */
export function machineName(arch: string = process.arch): string {
  switch (arch) {
    case 'x64':
      return 'x86_64';
    case 'arm64':
      return 'aarch64';
    default:
      return arch;
  }
}

export function nativeToolSource(name: NativeTool): string {
  return join(repoRoot, 'images', 'tools', `${name}.c`);
}

export function nativeToolPath(name: NativeTool, machine = machineName()): string {
  const hash = createHash('sha256').update(readFileSync(nativeToolSource(name))).digest('hex').slice(0, 16);
  return join(cacheDir(), 'tools', machine, hash, name);
}
