import { existsSync } from 'node:fs';
import { nativeToolPath } from '../util/native-tools.js';

/** The parent-death helper is not built: names the script that builds it. */
export class ParentDeathHelperMissing extends Error {
  override name = 'ParentDeathHelperMissing';
}

let helper: string | undefined;

/**
 * What to spawn so that `command` dies with this process, on any QEMU
 * version and even while stopped: images/tools/pdeathsig-exec.c sets
 * PR_SET_PDEATHSIG to SIGKILL, checks the harness is still its parent, and
 * execs `command` in place (same pid, so a Machine's pid is QEMU's). QEMU's
 * own `-run-with exit-with-parent=on` is not used: it is 9.1+ only and sends
 * SIGTERM, which a SIGSTOPped QEMU leaves pending forever.
 *
 * The signal fires when the thread that forked the child exits; Node spawns
 * from its main thread, whose exit is the process's.
 */
export function withParentDeath(command: string, args: readonly string[]): { command: string; args: string[] } {
  helper ??= nativeToolPath('pdeathsig-exec');
  if (!existsSync(helper)) {
    const missing = helper;
    helper = undefined; // built later in this process: look again next time
    throw new ParentDeathHelperMissing(
      `the parent-death helper ${missing} is not built: run scripts/build-tools.sh (every QEMU runs through it so that none outlives a killed harness)`,
    );
  }
  return { command: helper, args: [String(process.pid), command, ...args] };
}
