import { expect } from 'chai';
import Mocha from 'mocha';
import { DeadlineError, withDeadline } from '../../harness/util/deadline.js';
import { parseTimeoutMultiplier, scaled, scaleMochaTimeouts, TIMEOUT_MULTIPLIER_ENV, timeoutMultiplier } from '../../harness/util/timeouts.js';
import { runCommand } from '../../harness/cli/run.js';

/** Runs `fn` with $HARNESS_TIMEOUT_MULTIPLIER set to `k` (or unset), restoring it after. */
async function withMultiplier<T>(k: string | undefined, fn: () => T | Promise<T>): Promise<T> {
  const old = process.env[TIMEOUT_MULTIPLIER_ENV];
  if (k === undefined) delete process.env[TIMEOUT_MULTIPLIER_ENV];
  else process.env[TIMEOUT_MULTIPLIER_ENV] = k;
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env[TIMEOUT_MULTIPLIER_ENV];
    else process.env[TIMEOUT_MULTIPLIER_ENV] = old;
  }
}

function sink(): { stream: NodeJS.WritableStream; text: () => string } {
  let t = '';
  return { stream: { write: (s: string) => ((t += s), true) } as unknown as NodeJS.WritableStream, text: () => t };
}

describe('timeout multiplier', () => {
  it('parses 1 to 100 and refuses anything else naming where it came from', () => {
    expect(parseTimeoutMultiplier('2.5', '--timeout-multiplier')).to.equal(2.5);
    expect(parseTimeoutMultiplier('1', 'x')).to.equal(1);
    for (const bad of ['0.5', '0', '-2', 'abc', '1e3', '', '101', 'Infinity']) {
      expect(() => parseTimeoutMultiplier(bad, '--timeout-multiplier'), bad).to.throw(
        RangeError,
        `--timeout-multiplier wants a number from 1 to 100 (e.g. 2.5), not ${JSON.stringify(bad)}`,
      );
    }
    expect(() => timeoutMultiplier({ [TIMEOUT_MULTIPLIER_ENV]: 'x2' })).to.throw(/\$HARNESS_TIMEOUT_MULTIPLIER wants .* not "x2"/);
    expect(timeoutMultiplier({})).to.equal(1);
  });

  it('scales a deadline, leaves 0 (no deadline) alone and stays a valid timer delay', () => {
    const env = { [TIMEOUT_MULTIPLIER_ENV]: '3' };
    expect(scaled(30_000, env)).to.equal(90_000);
    expect(scaled(0, env)).to.equal(0);
    expect(scaled(2 ** 30, env)).to.equal(2 ** 31 - 1);
    expect(scaled(30_000, {})).to.equal(30_000);
  });

  it('withDeadline waits the scaled time and says so in its error', async () => {
    const never = new Promise<never>(() => {});
    const t0 = Date.now();
    const e = await withMultiplier('4', () =>
      withDeadline(never, 50, 'a test wait').then(
        () => undefined,
        (x: unknown) => x,
      ),
    );
    const took = Date.now() - t0;
    expect(e).to.be.instanceOf(DeadlineError);
    expect((e as DeadlineError).ms).to.equal(200);
    expect((e as Error).message).to.equal('a test wait: no answer within 200 ms (50 ms x 4 from $HARNESS_TIMEOUT_MULTIPLIER)');
    expect(took).to.be.at.least(195);
    // Unscaled, the same wait gives up at its own 50 ms.
    const e1 = await withMultiplier(undefined, () =>
      withDeadline(never, 50, 'a test wait').then(
        () => undefined,
        (x: unknown) => x,
      ),
    );
    expect((e1 as Error).message).to.equal('a test wait: no answer within 50 ms');
  });

  it("scales mocha's timeouts once each: the config default copied down to a test, and this.timeout(n)", async () => {
    // A Runnable class of its own, so the patch under test is applied fresh (the real one is patched by the hooks).
    class FakeRunnable {
      _timeout = 2000;
      timeout(ms?: number): number | this {
        if (ms === undefined) return this._timeout;
        this._timeout = ms;
        return this;
      }
    }
    scaleMochaTimeouts(FakeRunnable);
    scaleMochaTimeouts(FakeRunnable); // idempotent: not x4
    const r = new FakeRunnable();
    await withMultiplier('2', () => {
      r.timeout(60_000);
      expect(r.timeout()).to.equal(120_000);
      r.timeout(0);
      expect(r.timeout()).to.equal(0);
    });
    // The real one: this very test's timeout was set by the hooks' patched setter.
    const t = new Mocha.Test('t', () => {});
    await withMultiplier('3', () => t.timeout(1000));
    expect(t.timeout()).to.equal(3000);
  });

  it('harness run --timeout-multiplier refuses a bad factor with exit 128, naming the option', async () => {
    const out = sink();
    const err = sink();
    const status = await withMultiplier(undefined, () =>
      runCommand(['--list', '--suite', 'qemu', '--timeout-multiplier', '0.5'], { stdout: out.stream, stderr: err.stream }),
    );
    expect(status).to.equal(128);
    expect(err.text()).to.contain('--timeout-multiplier wants a number from 1 to 100 (e.g. 2.5), not "0.5"');
  });

  it('the virtual lab passes the multiplier to L1', async () => {
    const { L1_PASSED_ENV } = await import('../../harness/lab/virtual-lab.js');
    expect(L1_PASSED_ENV).to.include(TIMEOUT_MULTIPLIER_ENV);
  });
});
