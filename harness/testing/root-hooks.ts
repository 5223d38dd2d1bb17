import { mkdirSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Machine } from '../qemu/machine.js';
import { artifactsRoot, runArtifactsDir } from '../util/paths.js';

/** Runs kept under artifacts/runs; older ones are removed when a run starts. */
const KEEP_RUNS = 10;

/** Root hooks for every run: its own artifacts folder, and no QEMU outlives it. */
export const mochaHooks = {
  beforeAll(): void {
    const dir = runArtifactsDir();
    mkdirSync(dir, { recursive: true });
    const runs = join(artifactsRoot(), 'runs');
    const old = readdirSync(runs).sort().slice(0, -KEEP_RUNS);
    for (const r of old) rmSync(join(runs, r), { recursive: true, force: true });
    const latest = join(artifactsRoot(), 'latest');
    rmSync(latest, { force: true });
    try {
      symlinkSync(join('runs', basename(dir)), latest);
    } catch {
      /* a file system without symlinks (9p in L1): the run folder is still there */
    }
  },
  async afterAll(this: Mocha.Context): Promise<void> {
    this.timeout(60_000);
    await Machine.shutdownAll();
  },
};
