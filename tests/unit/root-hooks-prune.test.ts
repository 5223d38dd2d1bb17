import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { repoRoot } from '../../harness/util/paths.js';

const { HARNESS_JUNIT: _j, ...withoutJunit } = process.env;

describe('run folders kept at a run start', () => {
  it("keeps the newest ten and never the folder of a run still going (its pid alive); latest and a failing JUnit are this run's", async () => {
    const root = mkdtempSync(join(tmpdir(), 'prune-'));
    try {
      const runs = join(root, 'runs');
      // Twelve old runs of dead pids (2^22 + i is past any pid_max default), and the oldest of all by this live process.
      const names = [`20000101-000000-${process.pid}`, ...Array.from({ length: 12 }, (_, i) => `20000101-0000${String(i + 10)}-${4194304 + i}`)];
      for (const n of names) mkdirSync(join(runs, n), { recursive: true });
      const hooks = JSON.stringify(join(repoRoot, 'dist', 'harness', 'testing', 'root-hooks.js'));
      const r = await execa(
        'node',
        ['--input-type=module', '-e', `const { mochaHooks } = await import(${hooks}); mochaHooks.beforeAll(); console.log(process.pid);`],
        {
          env: { ...withoutJunit, HARNESS_ARTIFACTS: root },
          extendEnv: false,
          reject: false,
        },
      );
      expect(r.exitCode, String(r.stderr)).to.equal(0);
      const left = readdirSync(runs).sort();
      expect(left, 'the live run kept').to.include(names[0]);
      expect(left.filter((n) => n.startsWith('20000101-0000')).length, 'old runs kept').to.equal(9 + 1); // the nine newest beside the child's own, and the live one
      expect(left.at(-1)).to.match(new RegExp(`-${String(r.stdout).trim()}$`));
      expect(readFileSync(join(root, 'junit.xml'), 'utf8')).to.include('has not written its results');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
