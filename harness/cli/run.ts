import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import Mocha from 'mocha';
import HarnessReporter from '../report/mocha-reporter.js';
import { repoRoot } from '../util/paths.js';
import { parseOptions } from './main.js';
import { loadProfile, profileFromEnv, resolveProfilePath } from '../host/profile.js';
import { replayVfioJournal } from '../host/vfio-bind.js';

/** The suites `harness run` knows, as folders of compiled tests. */
export const SUITES = ['qemu', 'guest', 'virtual-lab', 'lab'] as const;

/**
 * Exit codes for `git bisect run`: good, bad, "cannot test this commit", and
 * a harness error (bad option, bad profile) that must stop the bisection
 * rather than mark a commit bad.
 */
export const EXIT = { passed: 0, failed: 1, nothingRan: 125, harnessError: 128 } as const;

export async function runCommand(args: string[]): Promise<number> {
  try {
    return await run(args);
  } catch (e) {
    console.error(`harness run: ${(e as Error).message}\n(exit ${EXIT.harnessError}: stops git bisect run)`);
    return EXIT.harnessError;
  }
}

async function run(args: string[]): Promise<number> {
  const { opts } = parseOptions(args, { values: ['suite', 'grep', 'junit', 'qemu-x86_64', 'qemu-aarch64', 'profile'] });
  // The binary choice reaches every layer (and the virtual lab's L1) through
  // the environment: an option wins over the environment, which wins over the
  // host profile's qemu paths; the reference QEMU comes last.
  const profileName = opts.get('profile')?.at(-1);
  if (profileName) process.env.HARNESS_HOST_PROFILE = resolveProfilePath(profileName);
  const profile = profileFromEnv() ? loadProfile(profileFromEnv()!) : undefined;
  for (const arch of ['x86_64', 'aarch64'] as const) {
    const p = opts.get(`qemu-${arch}`)?.at(-1) ?? process.env[`QEMU_${arch.toUpperCase()}`] ?? profile?.qemu[arch];
    if (p) process.env[`QEMU_${arch.toUpperCase()}`] = p;
  }
  // Devices a killed run left on vfio-pci go back to their drivers first.
  if (profile) {
    const journal = process.env.HARNESS_VFIO_JOURNAL;
    for (const r of replayVfioJournal(profile, journal ? { journal } : {})) console.error(`harness run: ${r.ok ? 'gave back' : 'could not give back'} ${r.bdf} (left by a killed run): ${r.detail}`);
  }
  if (opts.get('junit')) process.env.HARNESS_JUNIT = opts.get('junit')!.at(-1)!;
  const suites = opts.get('suite') ?? [...SUITES];
  for (const s of suites) {
    if (!(SUITES as readonly string[]).includes(s)) throw new Error(`unknown suite ${JSON.stringify(s)} (known: ${SUITES.join(', ')})`);
  }
  const mocha = new Mocha({ reporter: HarnessReporter, timeout: 120_000, slow: 5_000 });
  const grep = opts.get('grep')?.at(-1);
  if (grep) mocha.grep(grep);
  const { mochaHooks } = await import('../testing/root-hooks.js');
  mocha.rootHooks(mochaHooks);
  for (const s of suites) {
    const dir = join(repoRoot, 'dist', 'tests', s);
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir, { recursive: true }) as string[]) if (f.endsWith('.test.js')) mocha.addFile(join(dir, f));
  }
  await mocha.loadFilesAsync();
  const stats = await new Promise<Mocha.Stats | undefined>((resolve) => {
    const runner = mocha.run(() => resolve(runner.stats));
  });
  if (!stats || stats.passes + stats.failures === 0) return EXIT.nothingRan;
  return stats.failures > 0 ? EXIT.failed : EXIT.passed;
}
