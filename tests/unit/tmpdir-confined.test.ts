/**
 * A test run leaves nothing in the system temp folder (issue 12 part 3): the
 * run's $TMPDIR is its run folder (confineTmpdir, from tests/support/hooks.ts
 * and `harness run`), which goes at exit. A suite that forgets its folders
 * (tests/fixtures/tmp/leaky-suite.ts) runs in a child whose system temp folder
 * is one of this test's own: 0 entries after; and without the confinement it
 * does leave them, so the count can fail.
 */
import { expect } from 'chai';
import { execa } from 'execa';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';

const SUITE = join(repoRoot, 'dist', 'tests', 'fixtures', 'tmp', 'leaky-suite.js');
const MOCHA = join(repoRoot, 'node_modules', 'mocha', 'bin', 'mocha.js');

describe('temp folders: a test run leaves none in the system tmpdir', function () {
  this.timeout(60_000);
  let root: string;
  let system: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'tmp-confined-'));
    system = join(root, 'system-tmp');
    mkdirSync(system);
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  /** The leaky suite in a mocha of its own, given `system` as its temp folder; what it left there. */
  async function leftBy(args: string[]): Promise<string[]> {
    const r = await execa(process.execPath, [...args, SUITE], {
      cwd: repoRoot,
      reject: false,
      timeout: 50_000,
      env: { TMPDIR: system, HARNESS_ARTIFACTS: join(root, 'artifacts') },
    });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).to.equal(0);
    return readdirSync(system).sort();
  }

  it('without the confinement the suite leaves its three folders (so the count below can fail)', async () => {
    const left = await leftBy([MOCHA, '--no-config', '--reporter', 'dot']);
    expect(left).to.have.length(3);
    expect(left.filter((n) => n.startsWith('leaky-'))).to.have.length(2);
  });

  it('mocha with the project’s hooks (npm test): 0 entries left', async () => {
    expect(await leftBy([MOCHA, '--no-config', '--reporter', 'dot', '--require', join(repoRoot, 'dist', 'tests', 'support', 'hooks.js')])).to.deep.equal([]);
  });

  it('harness run --spec: 0 entries left', async () => {
    expect(await leftBy([join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', '--spec'])).to.deep.equal([]);
  });
});
