import { expect } from 'chai';
import { execa } from 'execa';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ARCHES, releaseQemuWrapper } from '../../harness/qemu/binary.js';
import type { TestResult } from '../../harness/report/junit.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { qemuLabel, requireReleaseQemu } from '../../harness/testing/prereqs.js';
import { sleep } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';
import { probeQemu } from '../../harness/viommu/probe.js';

/** Pids of live processes (not zombies) whose environment holds `entry` (NAME=VALUE). */
function processesWithEnv(entry: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (/ \S+\) Z/.test(readFileSync(`/proc/${d}/stat`, 'utf8'))) continue;
      if (readFileSync(`/proc/${d}/environ`, 'utf8').split('\0').includes(entry)) pids.push(Number(d));
    } catch {
      /* gone meanwhile, or not ours to read */
    }
  }
  return pids;
}

/**
 * The TCG suite against an older QEMU a user might bring: Debian trixie's
 * 10.0 (qemu-system-x86_64 and -aarch64), installed beside the reference by
 * scripts/install-qemu.sh --release trixie and named by its wrappers, as a
 * user names theirs. It must end with
 * 0 failures: what 10.0 lacks (vfio-user-pci, the qtest accelerator, svm, a
 * PASID width, monitor objects, exit-with-parent, a pluggable arm-smmuv3) is a skip naming the
 * binary, its version and the feature, or a test that adapts to what the
 * probe found; and no QEMU of that run may be left once it ends.
 */
describe('The TCG suite against an older QEMU (trixie 10.0)', function () {
  this.timeout(240_000);
  const machines = useMachines();

  it('0 failures; every skip names the binary, its version and what it lacks; 0 QEMU left', async function () {
    // Both emulators of that release: x86_64 for q35, aarch64 for virt's arm-smmuv3.
    const probes = await Promise.all(ARCHES.map(async (arch) => probeQemu(await requireReleaseQemu(this, 'trixie', arch))));
    const probe = probes[0]!;
    for (const p of probes) expect(p.version.major, p.version.text).to.equal(10);
    const dir = machines.artifactsDir;
    const results = join(dir, 'results.json');
    const junit = join(dir, 'junit.xml');
    // Every process of the run inherits this (Machine passes the harness's
    // environment to QEMU), so its QEMUs can be counted after it ends.
    const tag = `HARNESS_OLDER_QEMU_RUN=${randomUUID()}`;
    // Every TCG test file but this one (which would start the run again).
    const here = basename(new URL(import.meta.url).pathname);
    const testDir = join(repoRoot, 'dist', 'tests', 'qemu');
    const specs = readdirSync(testDir).filter((f) => f.endsWith('.test.js') && f !== here);
    const r = await execa(
      process.execPath,
      [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', ...ARCHES.flatMap((a) => [`--qemu-${a}`, releaseQemuWrapper('trixie', a)]), ...specs.flatMap((f) => ['--spec', join(testDir, f)])],
      {
        reject: false,
        all: true,
        timeout: 200_000,
        env: {
          ...process.env,
          HARNESS_ARTIFACTS: join(dir, 'artifacts'),
          HARNESS_RESULTS_JSON: results,
          HARNESS_JUNIT: junit,
          [tag.split('=')[0]!]: tag.split('=')[1]!,
        },
      },
    );
    const tail = (r.all ?? '').split('\n').slice(-40).join('\n');
    expect(existsSync(results), `no ${results}; the run printed:\n${tail}`).to.equal(true);
    expect(existsSync(junit), `no ${junit}`).to.equal(true);
    const all = JSON.parse(readFileSync(results, 'utf8')) as TestResult[];
    const failed = all.filter((t) => t.state === 'failed');
    expect(
      failed.map((t) => `${t.suite} › ${t.title}: ${(t.error ?? '').split('\n')[0]}`),
      `failures against ${qemuLabel(probe)} (artifacts ${dir})`,
    ).to.deep.equal([]);
    expect(r.exitCode, tail).to.equal(0);
    const passed = all.filter((t) => t.state === 'passed').length;
    // A run where most tests skipped would prove little: the suite must mostly run.
    expect(passed, 'tests that ran and passed against 10.0').to.be.at.least(40);

    // A skip is either a feature this binary lacks, named with the binary and
    // its version, or a prerequisite of the host (KVM), which the reference
    // run skips alike.
    const names = probes.flatMap((p) => [`${qemuLabel(p)} lacks `, `${qemuLabel(p)} has no `]);
    const unexplained = all
      .filter((t) => t.state === 'skipped')
      .filter((t) => !(names.some((n) => (t.skipReason ?? '').startsWith(n)) || / needs KVM: /.test(t.skipReason ?? '')))
      .map((t) => `${t.suite} › ${t.title}: ${t.skipReason}`);
    expect(unexplained, 'skips that do not name what this QEMU lacks').to.deep.equal([]);
    const skipped = all.filter((t) => t.state === 'skipped').map((t) => t.skipReason ?? '');
    // The features 10.0 is known to lack (facts §9 and its own probe) are among the reasons.
    expect(skipped.join('\n')).to.include('lacks device vfio-user-pci').and.include('accelerator qtest').and.include('shared virtual memory').and.include('has no arm-smmuv3 that -device takes');

    // A QEMU killed as its harness exits may take a moment to go: 5 s at most.
    let left = processesWithEnv(tag);
    for (const end = Date.now() + 5000; left.length && Date.now() < end; left = processesWithEnv(tag)) await sleep(50);
    expect(left, 'processes of the older-QEMU run still alive 5 s after it ended').to.deep.equal([]);
    this.test!.title += ` (${passed} passed, ${skipped.length} skipped)`;
  });
});
