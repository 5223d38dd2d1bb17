/**
 * SIGINT and SIGTERM during a run. The first signal is recorded and handed to
 * the run (which fails the current test as interrupted, stops its QEMUs and
 * writes its reports); a second one ends the process at once. While a run
 * owns the signals, other modules (the vfio binder) leave them to it instead
 * of re-raising, so the run can still write what it saw.
 */
export const INTERRUPT_SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;
export type InterruptSignal = keyof typeof INTERRUPT_SIGNALS;

export interface Interrupt {
  signal: InterruptSignal;
  /** Date.now() when it arrived. */
  atMs: number;
}

/** The failure of the test that was running when the run was interrupted. */
export class InterruptedError extends Error {
  override name = 'InterruptedError';
  constructor(readonly interrupt: Interrupt) {
    super(`interrupted by ${interrupt.signal}: the run was stopped while this test ran`);
  }
}

let current: Interrupt | undefined;
let owners = 0;

/** The interrupt this process received, if any. */
export function interruption(): Interrupt | undefined {
  return current;
}

/** 128 + the signal's number: what a shell reports for a process that died of it (130, 143). */
export function interruptExitCode(sig: InterruptSignal): number {
  return 128 + INTERRUPT_SIGNALS[sig];
}

/** True while a run handles SIGINT/SIGTERM itself. */
export function runOwnsInterrupts(): boolean {
  return owners > 0;
}

/**
 * Installs the run's handlers: `first` on the first SIGINT or SIGTERM,
 * `again` on any later one. Returns the function that removes them.
 */
export function handleInterrupts(first: (i: Interrupt) => void, again: (i: Interrupt) => void): () => void {
  const on = (signal: InterruptSignal): void => {
    if (current) return again({ signal, atMs: Date.now() });
    current = { signal, atMs: Date.now() };
    first(current);
  };
  const onInt = (): void => on('SIGINT');
  const onTerm = (): void => on('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  owners++;
  let removed = false;
  return () => {
    if (removed) return;
    removed = true;
    owners--;
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  };
}
