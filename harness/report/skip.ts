/**
 * A missing prerequisite is a skip with a reason, never a pass. The reason is
 * stored on the test so the reporter can count skips per reason apart from
 * passes and failures.
 */
export interface SkippableTest {
  skipReason?: string;
}

export function skipBecause(ctx: Mocha.Context, reason: string): never {
  const running = ctx.test as (Mocha.Runnable & { type?: string }) | undefined;
  if (running?.type === 'hook' && running.parent) {
    // In a before() hook mocha skips the whole suite: every test in it (and in
    // nested suites) gets the reason. (ctx.currentTest there is only the first.)
    for (const t of allTests(running.parent)) (t as Mocha.Test & SkippableTest).skipReason ??= reason;
  } else {
    const test = (ctx.currentTest ?? running) as (Mocha.Runnable & SkippableTest) | undefined;
    if (test) test.skipReason = reason;
  }
  ctx.skip();
}

function allTests(suite: Mocha.Suite): Mocha.Test[] {
  return [...suite.tests, ...suite.suites.flatMap(allTests)];
}
