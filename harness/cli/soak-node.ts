/**
 * A run that carries the soak (the lab suite: its soak runs 100 cycles in
 * npm test, $HARNESS_SOAK_CYCLES with --soak) runs itself again under
 * SOAK_NODE_FLAGS (harness/lab/soak.ts): V8's heap sizing and compiler are
 * fixed when Node starts, so the flags cannot be set from inside. The short
 * soak needs them as much as the long one: with TurboFan its 40-cycle heap
 * slope read 0.57 and 1.155 KiB/cycle against a bound of 1.
 * The child is the run: it gets the same arguments and environment, and dies
 * with this process (the parent-death helper); signals sent to this process
 * reach it once (it has a process group of its own, so a terminal's Ctrl-C
 * is not delivered twice: the run's second SIGINT means "kill now").
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { missingSoakNodeFlags } from '../lab/soak.js';
import { withParentDeath } from '../qemu/parent-death.js';

/** True where this process should hand the run to a child with the soak's Node flags. */
export function needsSoakNodeFlags(o: { runsLab: boolean; labUnavailable: string | undefined; execArgv?: readonly string[] }): boolean {
  // Only where the soak test runs in this process: the lab suite (on a lab host, or in L1), on a
  // host where it can run at all (elsewhere it skips whole: LabHost.unavailableReason). L0's run
  // of the virtual lab passes the cycles on to L1, whose own harness run re-runs itself.
  return o.runsLab && o.labUnavailable === undefined && missingSoakNodeFlags(o.execArgv).length > 0;
}

/** Runs this CLI again with `argv` under the soak's Node flags; resolves with the child's exit status. */
export function rerunWithSoakNodeFlags(argv: readonly string[]): Promise<number> {
  const script = process.argv[1];
  if (!script) throw new Error('cannot run the harness again under the soak flags: process.argv[1] (the CLI script) is missing');
  const { command, args } = withParentDeath(process.execPath, [...process.execArgv, ...missingSoakNodeFlags(), script, ...argv]);
  // One malloc arena: glibc's per-thread arenas (libuv's pool, V8's workers) each keep their own
  // high-water mark, which RSS sums; with one, what RSS adds is what the process needed at once.
  const env = { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1' };
  const child = spawn(command, args, { stdio: 'inherit', detached: true, env });
  const forward = (sig: NodeJS.Signals) => () => {
    child.kill(sig);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  const handlers = signals.map((s) => [s, forward(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      for (const [s, h] of handlers) process.off(s, h);
      resolve(code ?? 128 + (signal ? constants.signals[signal] : 0));
    });
  });
}
