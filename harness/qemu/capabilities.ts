import { execa } from 'execa';
import type { QemuBinary } from './binary.js';

const helpCache = new Map<string, Promise<string>>();

/** `-help` text of a binary, read once per path. */
export function helpText(bin: QemuBinary): Promise<string> {
  let p = helpCache.get(bin.path);
  if (!p) {
    p = execa(bin.command, [...bin.prefixArgs, '-help'], { env: bin.env, reject: false, timeout: 10_000 }).then((r) => r.stdout);
    helpCache.set(bin.path, p);
  }
  return p;
}

/** QEMU 9.1+ can die with its parent (PR_SET_PDEATHSIG); older ones cannot. */
export async function supportsExitWithParent(bin: QemuBinary): Promise<boolean> {
  return (await helpText(bin)).includes('exit-with-parent');
}
