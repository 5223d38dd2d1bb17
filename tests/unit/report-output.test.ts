import { expect } from 'chai';
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { failureLocation, githubAnnotation, parseReporter, reporterFromEnv } from '../../harness/report/output.js';
import { runCommand } from '../../harness/cli/run.js';
import { repoRoot } from '../../harness/util/paths.js';

const fixture = join(repoRoot, 'dist', 'tests', 'fixtures', 'reporter', 'two-tests.js');

/** mocha on the fixture with the harness's reporter, as npm test runs it, choosing the output by $HARNESS_REPORTER. */
async function runFixture(reporter: string | undefined): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'report-output-'));
  try {
    const r = await execa(
      process.execPath,
      [
        join(repoRoot, 'node_modules', 'mocha', 'bin', 'mocha.js'),
        '--no-config',
        '--enable-source-maps',
        '--reporter',
        join(repoRoot, 'dist', 'harness', 'report', 'mocha-reporter.js'),
        fixture,
      ],
      {
        reject: false,
        cwd: repoRoot,
        env: { HARNESS_ARTIFACTS: join(dir, 'artifacts'), HARNESS_JUNIT: join(dir, 'junit.xml'), HARNESS_REPORTER: reporter, HARNESS_RESULTS_JSONL: undefined },
        timeout: 60_000,
      },
    );
    return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('run output: --reporter spec|dot|github', () => {
  it('knows three reporters and refuses others naming the source', () => {
    expect(parseReporter('dot', '--reporter')).to.equal('dot');
    expect(() => parseReporter('tap', '--reporter')).to.throw('--reporter: unknown reporter "tap" (known: spec, dot, github)');
    expect(reporterFromEnv({})).to.equal('spec');
    expect(() => reporterFromEnv({ HARNESS_REPORTER: 'xunit' })).to.throw(/\$HARNESS_REPORTER: unknown reporter "xunit"/);
  });

  it('harness run --reporter with an unknown name exits 128', async () => {
    let err = '';
    const status = await runCommand(['--list', '--reporter', 'tap'], {
      stdout: { write: () => true } as unknown as NodeJS.WritableStream,
      stderr: { write: (s: string) => ((err += s), true) } as unknown as NodeJS.WritableStream,
    });
    expect(status).to.equal(128);
    expect(err).to.contain('--reporter: unknown reporter "tap"');
  });

  it("github: a failure's annotation names the test's own source line, its properties escaped", () => {
    // A chai failure's stack as mocha gives it with --enable-source-maps.
    const e = Object.assign(new Error('the requested flags: expected { flags: 9 } to deeply equal { flags: 1 }\n+ expected - actual'), {
      name: 'AssertionError',
      stack: `AssertionError: the requested flags: expected { flags: 9 }\n    at Context.<anonymous> (file://${repoRoot}/tests/fixtures/reporter/two-tests.ts:10:55)\n    at process.processImmediate (node:internal/timers:483:21)`,
    });
    expect(githubAnnotation('reporter fixture fails, with a comma, a colon: and 100%', e)).to.equal(
      '::error file=tests/fixtures/reporter/two-tests.ts,line=10,title=reporter fixture fails%2C with a comma%2C a colon%3A and 100%25::AssertionError: the requested flags: expected { flags: 9 } to deeply equal { flags: 1 }%0A+ expected - actual',
    );
    expect(
      failureLocation(`Error: x\n    at Timeout._onTimeout (${repoRoot}/node_modules/mocha/lib/runnable.js:1:1)`, join(repoRoot, 'dist/tests/unit/a.test.js')),
    ).to.deep.equal({ file: 'tests/unit/a.test.ts' });
  });

  it('a real run: github adds the annotation to the spec output, dot prints dots, spec names each test; each ends with the summary', async function () {
    this.timeout(120_000);
    const gh = await runFixture('github');
    expect(gh.exitCode).to.equal(1);
    expect(gh.stdout).to.match(
      /^::error file=tests\/fixtures\/reporter\/two-tests\.ts,line=10,title=reporter fixture fails%2C with a comma%2C a colon%3A and 100%25 in its title::AssertionError: the requested flags/m,
    );
    expect(gh.stdout).to.contain('✔ passes');
    const dot = await runFixture('dot');
    expect(dot.stdout).not.to.contain('✔ passes');
    expect(dot.stdout).not.to.contain('::error');
    expect(dot.stdout).to.match(/\n\s*[.․,!]{2,}/);
    const spec = await runFixture(undefined);
    expect(spec.stdout).to.contain('✔ passes');
    expect(spec.stdout).not.to.contain('::error');
    for (const r of [gh, dot, spec]) expect(r.stdout).to.match(/1 passed, 1 failed, 0 skipped/);
  });
});
