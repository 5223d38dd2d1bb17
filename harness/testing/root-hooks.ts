import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Machine } from '../qemu/machine.js';
import { artifactsRoot } from '../util/paths.js';

/** Root hooks for every run: a clean artifacts tree, and no QEMU outlives it. */
export const mochaHooks = {
  beforeAll(): void {
    rmSync(join(artifactsRoot(), 'tests'), { recursive: true, force: true });
    rmSync(join(artifactsRoot(), 'machines'), { recursive: true, force: true });
  },
  async afterAll(this: Mocha.Context): Promise<void> {
    this.timeout(60_000);
    await Machine.shutdownAll();
  },
};
