import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { MachineDescription } from '../qemu/argv.js';
import { Machine, type LaunchOptions } from '../qemu/machine.js';
import type { WithArtifacts } from '../report/mocha-reporter.js';
import { runArtifactsDir } from '../util/paths.js';

/** A folder name for a title; long titles keep a hash of the whole so two never share a folder. */
const slug = (s: string): string => {
  const base = s.toLowerCase().replace(/[^a-z0-9.+-]+/g, '-').replace(/^-+|-+$/g, '') || 'test';
  return base.length <= 80 ? base : `${base.slice(0, 71)}-${createHash('sha1').update(s).digest('hex').slice(0, 8)}`;
};

/** artifacts/tests/<suite>/<test>: one folder per test, named after it. */
export function testArtifactsDir(test: Mocha.Runnable): string {
  const parts: string[] = [];
  for (let s = test.parent; s && !s.root; s = s.parent) parts.unshift(slug(s.title));
  return join(runArtifactsDir(), 'tests', ...parts, slug(test.title));
}

/**
 * Machines owned by the current test, after Playwright's fixtures: the test
 * body only launches and asserts; the fixture gives each test its artifact
 * folder (shown by the reporter when the test fails) and shuts down every
 * machine the test launched, pass or fail.
 *
 *   describe('x', () => {
 *     const machines = useMachines();
 *     it('y', async () => { const m = await machines.launch(desc); ... });
 *   });
 */
export class MachineFixture {
  private current: Machine[] = [];
  private test: (Mocha.Runnable & WithArtifacts) | undefined;
  private count = 0;

  begin(test: Mocha.Runnable & WithArtifacts): void {
    this.test = test;
    this.count = 0;
  }

  /** The current test's artifact folder (created on first use). */
  get artifactsDir(): string {
    if (!this.test) throw new Error('useMachines(): no test is running');
    const dir = testArtifactsDir(this.test);
    mkdirSync(dir, { recursive: true });
    this.test.artifactsDir = dir;
    return dir;
  }

  async launch(desc: MachineDescription, opts: LaunchOptions = {}): Promise<Machine> {
    const name = opts.name ?? `${desc.machine.type}${++this.count > 1 ? `-${this.count}` : ''}`;
    const m = await Machine.launch(desc, { ...opts, name, artifactsDir: opts.artifactsDir ?? join(this.artifactsDir, name) });
    this.current.push(m);
    return m;
  }

  async end(): Promise<void> {
    const ms = this.current.splice(0);
    await Promise.all(ms.map((m) => m.shutdown()));
    this.test = undefined;
  }
}

/**
 * One set of machines for a whole describe block (e.g. the virtual lab's L1,
 * which takes seconds to boot): launched in before(), shut down in after(),
 * artifacts in the suite's own folder.
 */
export function useSuiteMachines(): MachineFixture {
  const f = new MachineFixture();
  before(function () {
    f.begin(this.test!.parent! as unknown as Mocha.Runnable);
  });
  after(async function () {
    this.timeout(60_000);
    await f.end();
  });
  return f;
}

export function useMachines(): MachineFixture {
  const f = new MachineFixture();
  beforeEach(function () {
    f.begin(this.currentTest!);
  });
  afterEach(async function () {
    this.timeout(30_000);
    await f.end();
  });
  return f;
}
