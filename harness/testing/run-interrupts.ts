/**
 * What `harness run` does on SIGINT/SIGTERM: the test that is running fails
 * as interrupted, mocha runs no further test (its after-hooks still stop the
 * fixtures' QEMUs and give devices back), every QEMU is shut down by PID with
 * short deadlines, and the reports are written marking the run interrupted.
 * Hooks that overrun INTERRUPT_DEADLINE_MS are cut short: QEMUs SIGKILLed,
 * reports written without them. A second signal ends the process at once
 * (the exit hooks still SIGKILL every QEMU and give devices back; the JUnit
 * then is the one written at the start, saying the run did not finish).
 */
import type Mocha from 'mocha';
import { Machine } from '../qemu/machine.js';
import { sleep } from '../util/deadline.js';
import { finishActiveReport } from '../report/mocha-reporter.js';
import { handleInterrupts, interruptExitCode, InterruptedError, type Interrupt } from '../util/interrupt.js';

/** From the signal to the reports written and the process gone, at most. */
export const INTERRUPT_DEADLINE_MS = Number(process.env.HARNESS_INTERRUPT_DEADLINE_MS ?? 20_000);

type Runnable = Mocha.Runnable & { isPassed(): boolean; isFailed(): boolean };

/** Supervises one mocha run; returns the function to call once it has ended. */
export function superviseInterrupts(runner: Mocha.Runner, log: (line: string) => void): () => void {
  let deadline: NodeJS.Timeout | undefined;
  const first = (i: Interrupt): void => {
    log(`${i.signal}: failing the current test as interrupted, stopping every QEMU (pids ${Machine.livePids.join(', ') || 'none'}) within ${INTERRUPT_DEADLINE_MS / 1000} s; ${i.signal} again ends the run at once`);
    runner.abort();
    const cur = runner.currentRunnable as Runnable | undefined;
    // A test that already has its verdict keeps it; only the running one is failed.
    if (cur && !cur.isPassed() && !cur.isFailed() && !cur.isPending()) (runner as Mocha.Runner & { uncaught(e: Error): void }).uncaught(new InterruptedError(i));
    void Machine.shutdownAll({ quitTimeoutMs: 1000, termTimeoutMs: 1000 });
    deadline = setTimeout(async () => {
      log(`${i.signal}: the run's hooks did not end within ${INTERRUPT_DEADLINE_MS / 1000} s; SIGKILL to QEMU pids ${Machine.livePids.join(', ') || 'none'}, writing the reports`);
      for (const pid of Machine.livePids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      // Reaped before the exit handlers give devices back: a QEMU still holding a cdev blocks that.
      await Promise.race([Machine.shutdownAll(), sleep(3000)]);
      finishActiveReport();
      process.exit(interruptExitCode(i.signal));
    }, INTERRUPT_DEADLINE_MS);
  };
  const again = (i: Interrupt): void => {
    log(`${i.signal} again: ending now`);
    process.exit(interruptExitCode(i.signal));
  };
  const remove = handleInterrupts(first, again);
  return () => {
    clearTimeout(deadline);
    remove();
  };
}
