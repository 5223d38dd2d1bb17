import { describeDeadline, scaled } from './timeouts.js';

/** An error raised when a wait runs past its deadline; `what` names the wait. */
export class DeadlineError extends Error {
  override name = 'DeadlineError';
  constructor(
    readonly what: string,
    readonly ms: number,
    detail?: string,
  ) {
    super(`${what}: no answer within ${describeDeadline(ms)}${detail ? `\n${detail}` : ''}`);
  }
}

/**
 * Races `promise` against a timer. The timer is always cleared, so a settled
 * wait never keeps the process alive; `onTimeout` may clean up (e.g. drop a
 * listener) before the DeadlineError is thrown. `ms` is scaled by the
 * timeout multiplier (harness/util/timeouts.ts).
 */
export async function withDeadline<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  onTimeout?: () => string | void,
): Promise<T> {
  const limit = scaled(ms);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(what, limit, onTimeout?.() ?? undefined)), limit);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
