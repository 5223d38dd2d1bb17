/**
 * The one policy for how long the harness waits. Every deadline in the
 * harness is written for a 2-core TCG box; a slower runner (nested KVM, a
 * loaded CI host) scales all of them at once with `--timeout-multiplier X`
 * or `$HARNESS_TIMEOUT_MULTIPLIER`, which `harness run` passes on to the
 * virtual lab's L1. Waits call `scaled(ms)` where they arm their timer
 * (withDeadline, QMP commands and events, agent and console waits, helper
 * processes); mocha's timeouts are scaled where a runnable's timeout is set
 * (`scaleMochaTimeouts`), so `this.timeout(n)` in a test scales too.
 */

export const TIMEOUT_MULTIPLIER_ENV = 'HARNESS_TIMEOUT_MULTIPLIER';

/** Above this a typo (600 for 6.00) is likelier than a runner that slow. */
export const MAX_TIMEOUT_MULTIPLIER = 100;

/**
 * `text` as a multiplier, or an error naming `source` and the value. Below 1
 * is refused: deadlines elsewhere are set as "time used so far + margin",
 * which a factor below 1 would cut under the time already used.
 */
export function parseTimeoutMultiplier(text: string, source: string): number {
  const k = /^\s*\d+(\.\d+)?\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!(k >= 1 && k <= MAX_TIMEOUT_MULTIPLIER)) {
    throw new RangeError(`${source} wants a number from 1 to ${MAX_TIMEOUT_MULTIPLIER} (e.g. 2.5), not ${JSON.stringify(text.slice(0, 40))}`);
  }
  return k;
}

/** The multiplier in force: `$HARNESS_TIMEOUT_MULTIPLIER`, else 1. Read each time, so a CLI option set in the environment applies. */
export function timeoutMultiplier(env: NodeJS.ProcessEnv = process.env): number {
  const v = env[TIMEOUT_MULTIPLIER_ENV];
  return v === undefined || v === '' ? 1 : parseTimeoutMultiplier(v, `$${TIMEOUT_MULTIPLIER_ENV}`);
}

/** `ms` scaled by the multiplier (0, "no deadline", stays 0; the result stays a valid timer delay). */
export function scaled(ms: number, env: NodeJS.ProcessEnv = process.env): number {
  const k = timeoutMultiplier(env);
  if (k === 1 || !(ms > 0)) return ms;
  // setTimeout treats anything over 2^31-1 ms as 1 ms.
  return Math.min(Math.round(ms * k), 2 ** 31 - 1);
}

/** How a scaled deadline reads in a message: "240000 ms (60000 ms x 4 from $HARNESS_TIMEOUT_MULTIPLIER)". */
export function describeDeadline(ms: number, env: NodeJS.ProcessEnv = process.env): string {
  const k = timeoutMultiplier(env);
  return k === 1 ? `${ms} ms` : `${ms} ms (${Math.round(ms / k)} ms x ${k} from $${TIMEOUT_MULTIPLIER_ENV})`;
}

interface RunnableProto {
  timeout(ms?: number | string): unknown;
}
const PATCHED = Symbol.for('viommu-harness.scaled-timeouts');

/**
 * Scales every timeout mocha sets on a test or hook: the config's default
 * reaches each runnable through `Runnable#timeout(suite.timeout())`, and a
 * test's `this.timeout(n)` through the same setter, so patching the setter
 * scales each exactly once (a suite's own value stays unscaled, as mocha
 * copies it down). Idempotent: `harness run` and .mocharc's hooks both call it.
 */
export function scaleMochaTimeouts(Runnable: { prototype: RunnableProto }): void {
  const proto = Runnable.prototype as RunnableProto & { [PATCHED]?: true };
  if (proto[PATCHED]) return;
  const original = proto.timeout;
  proto.timeout = function (this: RunnableProto, ...args: [ms?: number | string]) {
    if (args.length === 0) return original.call(this);
    const ms = args[0];
    return original.call(this, typeof ms === 'number' ? scaled(ms) : ms);
  };
  proto[PATCHED] = true;
}
