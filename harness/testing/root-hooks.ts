import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Machine } from '../qemu/machine.js';
import { startRunFiles } from '../report/run-files.js';
import { ownerAlive } from '../util/owner.js';
import { artifactsRoot, runArtifactsDir } from '../util/paths.js';

/** Runs kept under artifacts/runs; older ones are removed when a run starts. */
const KEEP_RUNS = 10;

/** Root hooks for every run: its own artifacts folder, and no QEMU outlives it. */
export const mochaHooks = {
  beforeAll(): void {
    const dir = runArtifactsDir();
    mkdirSync(dir, { recursive: true });
    const runs = join(artifactsRoot(), 'runs');
    // Never a folder of a run still going (two runs at once in one checkout): its pid is in its name.
    const old = readdirSync(runs)
      .sort()
      .slice(0, -KEEP_RUNS)
      .filter((r) => {
        const pid = Number(/-(\d+)$/.exec(r)?.[1]);
        return !pid || pid === process.pid || !ownerAlive({ pid });
      });
    for (const r of old) rmSync(join(runs, r), { recursive: true, force: true });
    // latest and a failing placeholder JUnit for this run, each in one rename, so a killed npm test
    // never leaves an older run's verdict standing (harness run has done this before loading).
    startRunFiles();
  },
  async afterAll(this: Mocha.Context): Promise<void> {
    this.timeout(60_000);
    await Machine.shutdownAll();
  },
};
