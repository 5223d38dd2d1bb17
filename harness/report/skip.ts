/**
 * A missing prerequisite is a skip with a reason, never a pass. The reason is
 * stored on the test so the reporter can count skips per reason apart from
 * passes and failures.
 */
export interface SkippableTest {
  skipReason?: string;
}

export function skipBecause(ctx: Mocha.Context, reason: string): never {
  const test = (ctx.currentTest ?? ctx.test) as (Mocha.Runnable & SkippableTest) | undefined;
  if (test) test.skipReason = reason;
  // In a before() hook mocha skips the whole suite; record the reason on each test.
  if (test && (test as { type?: string }).type === 'hook' && test.parent) {
    for (const t of allTests(test.parent)) (t as Mocha.Test & SkippableTest).skipReason ??= reason;
  }
  ctx.skip();
}

function allTests(suite: Mocha.Suite): Mocha.Test[] {
  return [...suite.tests, ...suite.suites.flatMap(allTests)];
}
