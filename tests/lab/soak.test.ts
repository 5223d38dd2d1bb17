import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { useLabHost } from '../../harness/lab/fixture.js';
import { type SkippableTest, skipBecause } from '../../harness/report/skip.js';
import { formatsFor, spareRootPort, vfioPciDevice, type L2Spec } from '../../harness/lab/l2.js';
import { formatSoakFigures, missingSoakNodeFlags, SOAK_CYCLES_SHORT, SOAK_SUITE, type SoakSample, soakCycles, soakFigures } from '../../harness/lab/soak.js';
import { TraceWindow } from '../../harness/lab/trace-window.js';
import { anonKiB, collectGarbage, fdsOf, rssKiB } from '../../harness/util/process-stats.js';
import { loadConfig } from '../../harness/viommu/configs.js';

/**
 * The lab's hot-plug scenario, $HARNESS_SOAK_CYCLES times (100 in npm test,
 * 500 in npm run soak) on one L2: each cycle device_add attaches the device
 * (IOAS, HWPT), device_del detaches it and frees both. A leak of any kind
 * grows with the cycles; the figures go to the log and soak.json.
 */
/** The figures mean something only under the soak's Node flags and one malloc arena (harness run --suite lab re-runs itself with them). */
function expectSoakSettings(): void {
  expect(missingSoakNodeFlags(), "the soak's Node flags (harness run adds them; harness/lab/soak.ts says why)").to.deep.equal([]);
  expect(process.env.MALLOC_ARENA_MAX, 'MALLOC_ARENA_MAX (harness run sets 1 unless set)').to.not.equal(undefined);
}

describe(SOAK_SUITE, function () {
  const cycles = soakCycles();
  this.timeout(120_000 + cycles * 15_000);
  const lab = useLabHost();
  /** The first test's figures, judged for RSS by the second. */
  let figures: ReturnType<typeof soakFigures> | undefined;

  it("device_add/device_del cycles leave no iommufd id and no fd, QEMU's or the harness's, and the harness's heap grows < 1 KiB per cycle after the warm-up", async function () {
    expectSoakSettings();
    const dev = await lab.host.device(this, 'no-pasid');
    // No vIOMMU: the attach is the host IOMMU's alone, on either platform.
    const spec: L2Spec = { config: loadConfig(lab.l2Arch === 'aarch64' ? 'no-viommu-virt' : 'no-viommu-q35'), spareRootPorts: 1 };
    lab.requireConfig(this, spec.config);
    const m = await lab.launchL2(spec);
    const bus = spareRootPort(spec);
    const window = new TraceWindow(m.traceFile!, await formatsFor(m.binary.traceEventsAll));
    // Every sample made before the first cycle and filled in place: the soak's own records must not
    // read as the harness growing (appended, they would grow the heap with the cycles).
    const kprobes = lab.host.kprobes !== undefined;
    const samples: SoakSample[] = Array.from({ length: cycles }, (_, i) => ({
      cycle: i + 1,
      liveIds: 0,
      ...(kprobes ? { kernelRecords: 0 } : {}),
      qemuFds: 0,
      qemuRssKiB: 0,
      harnessFds: 0,
      harnessRssKiB: 0,
      harnessHeapKiB: 0,
      harnessHeapCommittedKiB: 0,
      harnessExternalKiB: 0,
      harnessAnonKiB: 0,
      traceLines: 0,
      ms: 0,
    }));
    for (let i = 1; i <= cycles; i++) {
      const t0 = Date.now();
      await m.qmp.deviceAdd(vfioPciDevice({ bdf: dev.bdf, id: `soak${i}` }, bus) as never);
      await m.qmp.deviceDel(`soak${i}`, 10_000);
      const ms = Date.now() - t0;
      // This cycle's trace lines and kernel answers only, then dropped: a soak must not keep every cycle's.
      const kernel = lab.kernel();
      const model = window.next(kernel);
      lab.host.kprobes?.clear();
      collectGarbage();
      const x = samples[i - 1]!;
      x.liveIds = model.liveObjects().length;
      if (kprobes) x.kernelRecords = kernel.length;
      x.qemuFds = fdsOf(m.pid);
      x.qemuRssKiB = rssKiB(m.pid);
      x.harnessFds = fdsOf('self');
      x.harnessRssKiB = rssKiB('self');
      const mem = process.memoryUsage();
      x.harnessHeapKiB = Math.round(mem.heapUsed / 1024);
      x.harnessHeapCommittedKiB = Math.round(mem.heapTotal / 1024);
      x.harnessExternalKiB = Math.round(mem.external / 1024);
      x.harnessAnonKiB = anonKiB('self');
      x.traceLines = window.lines;
      x.ms = ms;
    }
    const f = soakFigures(samples);
    figures = f;
    console.log(formatSoakFigures(f).replace(/^/gm, '      '));
    writeFileSync(join(lab.machines.artifactsDir, 'soak.json'), `${JSON.stringify({ figures: f, samples }, null, 1)}\n`);
    expect(f.liveIdsTotal, "iommufd objects the cycles left live (per QEMU's trace)").to.equal(0);
    expect(f.qemuFdsLeaked, 'QEMU fds gained since cycle 1').to.equal(0);
    expect(f.harnessFdsLeaked, 'harness fds gained since cycle 1').to.equal(0);
    expect(f.traceLinesPerCycle, 'trace lines per cycle (each cycle must be traced)').to.be.greaterThan(0);
    expect(f.harnessHeapSlopeKiB, `harness heap growth (after GC) past ${f.warmup} warm-up cycles, KiB per cycle (least squares)`).to.be.below(1);
  });

  it(`the harness's RSS grows < 1 KiB per cycle after the warm-up, over ${SOAK_CYCLES_SHORT} cycles or more`, function () {
    // RSS settles slowly over the first cycles (harness/lab/soak.ts, SOAK_CYCLES_SHORT): over a
    // shorter run (`harness run --soak 20`) its slope says little, so that is a counted skip, not a pass.
    if (cycles < SOAK_CYCLES_SHORT)
      skipBecause(
        this,
        `the RSS bound is judged over ${SOAK_CYCLES_SHORT} cycles or more (npm test runs ${SOAK_CYCLES_SHORT}, npm run soak 500); this run has ${cycles}`,
      );
    const soak = this.test!.parent!.tests[0] as Mocha.Test & SkippableTest;
    if (soak.isPending()) skipBecause(this, `the soak above was skipped: ${soak.skipReason ?? '(no reason)'}`);
    expectSoakSettings();
    expect(figures, 'figures of the soak above (did it run to its end?)').to.not.equal(undefined);
    expect(figures!.harnessRssSlopeKiB, `harness RSS growth after ${figures!.warmup} warm-up cycles, KiB per cycle (least squares)`).to.be.below(1);
  });
});
