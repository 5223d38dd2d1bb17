import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Machine } from '../harness/qemu/machine.js';
import { artifactsRoot } from '../harness/util/paths.js';
import { benchQmp } from './qmp.js';
import { formatResult, type BenchResult } from './stats.js';

/**
 * `npm run bench`: every bench, each reporting ratios against a peer measured
 * in the same run. Absolute numbers are printed for people, never asserted.
 * Benches that need something absent (the guest kernel, the Python peer)
 * say so instead of failing.
 */
const benches: Array<[string, () => Promise<BenchResult>]> = [['qmp', benchQmp]];

async function optional(modulePath: string, exportName: string): Promise<(() => Promise<BenchResult>) | undefined> {
  try {
    return (await import(modulePath))[exportName] as () => Promise<BenchResult>;
  } catch {
    return undefined;
  }
}

const only = process.argv.slice(2);
for (const [name, mod, fn] of [
  ['trace-decode', './trace-decode.js', 'benchTraceDecode'],
  ['guest-boot', './guest-boot.js', 'benchGuestBoot'],
  ['lab-attach', './lab-attach.js', 'benchLabAttach'],
  ['arm64-lab', './arm64-lab.js', 'benchArm64Lab'],
] as const) {
  const f = await optional(mod, fn);
  if (f) benches.push([name, f]);
}

const results: BenchResult[] = [];
let failed = false;
for (const [name, run] of benches) {
  if (only.length && !only.includes(name)) continue;
  try {
    const r = await run();
    results.push(r);
    console.log(formatResult(r));
  } catch (e) {
    failed = true;
    console.log(`== ${name}: failed: ${(e as Error).stack ?? e}`);
  }
}
await Machine.shutdownAll();
const dir = join(artifactsRoot(), 'bench');
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, 'results.json'), JSON.stringify(results, null, 2));
console.log(`\nresults: ${join(dir, 'results.json')}`);
process.exitCode = failed ? 1 : 0;
