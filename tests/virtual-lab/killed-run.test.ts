/**
 * A `harness run` SIGKILLed while the virtual lab's L1 runs its lab suites
 * (issue 12 part 3): L1's QEMU dies with it (the parent-death helper), the
 * vfio-user servers with the process, so nothing is left; the only temp
 * folder left is the run's own, which the next run sweeps. One L1 boot: the
 * child runs the soak, long enough to be killed while L2 runs inside L1.
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { requireGuestImage } from '../../harness/guest/image.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';
import { RUN_TMP_PREFIX, systemTmpdir } from '../../harness/util/run-tmp.js';
import { descendants, stillAlive } from '../support/processes.js';

const { HARNESS_JUNIT: _j, HARNESS_ARTIFACTS: _a, ...baseEnv } = process.env;

/** A file under `dir` whose path matches `re` (recursive), or undefined. */
function find(dir: string, re: RegExp): string | undefined {
  if (!existsSync(dir)) return undefined;
  return (readdirSync(dir, { recursive: true }) as string[]).find((f) => re.test(f));
}

describe('a harness run SIGKILLed while L1 runs', function () {
  this.timeout(15 * 60_000);
  // Made in a hook: describe bodies also run where this file is only loaded (the child's --list of the suites).
  let root = '';
  before(() => {
    // In the system temp folder, not this run's (confined $TMPDIR): the child's socket paths below it must fit in 108 bytes.
    root = mkdtempSync(join(systemTmpdir(), 'hk-'));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it('leaves no process; its one temp folder is swept by the next run', async function () {
    await requireQemu(this, 'x86_64');
    requireGuestImage(this);
    const tmp = join(root, 't');
    const artifacts = join(root, 'a');
    rmSync(tmp, { recursive: true, force: true });
    const env = { ...baseEnv, TMPDIR: tmp, HARNESS_ARTIFACTS: artifacts, HARNESS_JUNIT: join(root, 'junit.xml') };
    mkdirSync(tmp, { recursive: true });
    const cli = join(repoRoot, 'dist', 'harness', 'cli.js');
    const child = execa('node', [cli, 'run', '--soak', '100000'], { env, extendEnv: false, reject: false });
    // L2 launched inside L1 by the soak: its cmdline.txt in L1's artifacts (on the results share).
    const l2 = await withDeadline(
      (async () => {
        for (;;) {
          const f = find(artifacts, /l1\/artifacts\/runs\/[^/]+\/tests\/soak[^/]*\/[^/]+\/l2\/cmdline\.txt$/);
          if (f) return f;
          if (child.exitCode !== null) throw new Error(`harness run ended first: ${String((await child).stdout).slice(-2000)}`);
          await sleep(500);
        }
      })(),
      10 * 60_000,
      "L1 to launch the soak's L2",
    );
    const below = descendants(child.pid!);
    const t0 = Date.now();
    child.kill('SIGKILL');
    await child;
    const left = await stillAlive(below, 10_000);
    console.log(`      killed with L2 up in L1 (${l2}); ${below.length} processes below the run, ${left.length} left ${Date.now() - t0} ms later`);
    expect(left, 'processes left').to.deep.equal([]);
    expect(readdirSync(tmp), "temp folders: only the run's own").to.deep.equal(readdirSync(tmp).filter((n) => n.startsWith(`${RUN_TMP_PREFIX}${child.pid}-`)));
    expect(readdirSync(tmp)).to.have.length(1);
    const quick = join(root, 'quick.test.mjs');
    writeFileSync(quick, `describe('quick', () => { it('passes', () => {}); });\n`);
    const next = await execa('node', [cli, 'run', '--spec', quick], { env, extendEnv: false, reject: false });
    expect(next.exitCode, String(next.stderr)).to.equal(0);
    expect(readdirSync(tmp), 'temp folders after the next run').to.deep.equal([]);
  });
});
