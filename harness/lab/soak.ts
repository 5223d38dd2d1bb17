/**
 * Long runs (issue 12 part 4): the lab's hot-plug scenario (device_add
 * attaches a vfio-pci device to a fresh HWPT, device_del detaches it and
 * frees HWPT and IOAS) repeated N times on one L2, sampling after each cycle
 * what a leak would grow: iommufd objects the trace model still counts as
 * live, QEMU's and the harness's fds and RSS, trace lines. After the
 * warm-up, RSS growth is a least-squares slope, so one GC or allocator step
 * does not read as a leak.
 */

/** The soak suite's title (tests/lab/soak.test.ts): `harness run --soak N` selects it. */
export const SOAK_SUITE = 'soak: hot-plug cycles on one L2';

/**
 * Cycles npm test's soak runs, and the fewest over which RSS is judged. RSS
 * settles slowly in the first cycles (pages touched once): the x86 lab's
 * RSS slope over a 60-cycle run read 0.71 and 0.72 KiB/cycle in two runs,
 * over 100 cycles 0.34 and 0.33 (its 500-cycle slope: 0.02).
 */
export const SOAK_CYCLES_SHORT = 100;

/** Cycles a soak runs: $HARNESS_SOAK_CYCLES (harness run --soak N sets it), else `fallback`. */
export function soakCycles(env: NodeJS.ProcessEnv = process.env, fallback = SOAK_CYCLES_SHORT): number {
  const v = env.HARNESS_SOAK_CYCLES;
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 2) throw new Error(`HARNESS_SOAK_CYCLES wants a whole number of cycles, at least 2, not ${JSON.stringify(v)}`);
  return n;
}

/** Time a soak of $HARNESS_SOAK_CYCLES cycles adds to a run's budget (15 s a cycle under TCG in L1); 0 when none is asked. */
export function soakBudgetMs(env: NodeJS.ProcessEnv = process.env): number {
  return env.HARNESS_SOAK_CYCLES ? soakCycles(env) * 15_000 : 0;
}

/** Cycles left out of the fit: 50, or a third of a shorter run (a 100-cycle run fits its last 67). */
export function soakWarmup(cycles: number): number {
  return Math.min(50, Math.floor(cycles / 3));
}

export interface SoakSample {
  cycle: number;
  /** iommufd objects this cycle allocated and did not free, per QEMU's trace (its model's liveObjects()). */
  liveIds: number;
  /** Kernel answers (kprobes) recorded this cycle, where the host has them. */
  kernelRecords?: number;
  qemuFds: number;
  qemuRssKiB: number;
  harnessFds: number;
  /** The harness's RSS after a full garbage collection. */
  harnessRssKiB: number;
  /** The harness's V8 heap in use after it (what the harness keeps, without the allocator's slack). */
  harnessHeapKiB: number;
  /**
   * Where RSS might grow when the heap does not, kept in soak.json to attribute RSS steps:
   * V8's committed heap, memory outside it (Buffers), and the process's anonymous memory.
   */
  harnessHeapCommittedKiB?: number;
  harnessExternalKiB?: number;
  harnessAnonKiB?: number;
  traceLines: number;
  ms: number;
}

export interface SoakFigures {
  cycles: number;
  warmup: number;
  first: SoakSample;
  last: SoakSample;
  /** Objects the cycles allocated and left live, summed (each cycle ends with the device unplugged: 0 expected). */
  liveIdsTotal: number;
  /** Most objects one cycle left live. */
  liveIdsMax: number;
  qemuFdsLeaked: number;
  harnessFdsLeaked: number;
  /** KiB per cycle, least squares over the cycles after the warm-up. */
  harnessRssSlopeKiB: number;
  harnessHeapSlopeKiB: number;
  qemuRssSlopeKiB: number;
  traceLinesPerCycle: number;
  msPerCycle: number;
}

/** The least-squares slope of ys over xs. */
export function linearSlope(xs: readonly number[], ys: readonly number[]): number {
  if (xs.length !== ys.length || xs.length < 2) throw new Error(`a slope needs two or more points of x and y (got ${xs.length} and ${ys.length})`);
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    sxx += (xs[i]! - mx) ** 2;
  }
  if (sxx === 0) throw new Error('a slope needs at least two distinct x values');
  return sxy / sxx;
}

/** The figures of a soak: leaks against the first cycle, RSS slopes after the warm-up. */
export function soakFigures(samples: readonly SoakSample[], warmup = soakWarmup(samples.length)): SoakFigures {
  if (samples.length < warmup + 2) throw new Error(`a soak of ${samples.length} cycles leaves fewer than 2 after a warm-up of ${warmup}`);
  const first = samples[0]!;
  const last = samples[samples.length - 1]!;
  const fitted = samples.slice(warmup);
  const xs = fitted.map((s) => s.cycle);
  return {
    cycles: samples.length,
    warmup,
    first,
    last,
    liveIdsTotal: samples.reduce((a, s) => a + s.liveIds, 0),
    liveIdsMax: Math.max(...samples.map((s) => s.liveIds)),
    qemuFdsLeaked: last.qemuFds - first.qemuFds,
    harnessFdsLeaked: last.harnessFds - first.harnessFds,
    harnessRssSlopeKiB: linearSlope(
      xs,
      fitted.map((s) => s.harnessRssKiB),
    ),
    harnessHeapSlopeKiB: linearSlope(
      xs,
      fitted.map((s) => s.harnessHeapKiB),
    ),
    qemuRssSlopeKiB: linearSlope(
      xs,
      fitted.map((s) => s.qemuRssKiB),
    ),
    traceLinesPerCycle: (last.traceLines - first.traceLines) / Math.max(1, last.cycle - first.cycle),
    msPerCycle: samples.reduce((a, s) => a + s.ms, 0) / samples.length,
  };
}

/** The figures as the soak prints them. */
export function formatSoakFigures(f: SoakFigures): string {
  const kib = (n: number) => `${n.toFixed(2)} KiB/cycle`;
  return [
    `soak: ${f.cycles} cycles (${f.msPerCycle.toFixed(0)} ms each), fit after ${f.warmup} warm-up cycles; node ${process.execArgv.filter((a) => SOAK_NODE_FLAGS.includes(a)).join(' ') || '(without the soak flags)'}`,
    `  iommufd ids left live by the cycles: ${f.liveIdsTotal} in all, at most ${f.liveIdsMax} by one`,
    `  QEMU fds: ${f.first.qemuFds} -> ${f.last.qemuFds} (${f.qemuFdsLeaked >= 0 ? '+' : ''}${f.qemuFdsLeaked}); harness fds: ${f.first.harnessFds} -> ${f.last.harnessFds} (${f.harnessFdsLeaked >= 0 ? '+' : ''}${f.harnessFdsLeaked})`,
    `  harness RSS: ${f.first.harnessRssKiB} -> ${f.last.harnessRssKiB} KiB, slope ${kib(f.harnessRssSlopeKiB)} (heap ${f.first.harnessHeapKiB} -> ${f.last.harnessHeapKiB} KiB, ${kib(f.harnessHeapSlopeKiB)}); QEMU RSS: ${f.first.qemuRssKiB} -> ${f.last.qemuRssKiB} KiB, slope ${kib(f.qemuRssSlopeKiB)}`,
    `  trace: ${f.first.traceLines} -> ${f.last.traceLines} lines (${f.traceLinesPerCycle.toFixed(1)} per cycle)${f.last.kernelRecords === undefined ? '' : `; kernel answers in the last cycle: ${f.last.kernelRecords}`}`,
  ].join('\n');
}

/**
 * The Node flags the process that runs the soak gets (`harness run` adds them,
 * harness/cli/soak-node.ts), so that RSS shows what the harness keeps:
 * - no optimizing compiler (--no-opt, and --no-maglev for Node 24's V8, the
 *   arm64 root's: with Maglev on and TurboFan off the arm64 lab's heap still
 *   grew 0.99 KiB/cycle over 500 cycles, RSS 5.6). TurboFan keeps making new optimized
 *   code and deoptimization data for the same closures, cycle after cycle: in
 *   a heap snapshot diff over 1000 cycles the new objects were that code, not
 *   harness data. In the x86 lab's L1, 500 cycles: heap +0.33 KiB/cycle with
 *   it, -0.015 without; RSS 2.94 KiB/cycle with it, 0.76 without.
 * - a fixed 1 MiB young generation, and garbage collection on the main thread
 *   only: otherwise V8 resizes the young generation in steps of megabytes and
 *   background threads give pages back at moments the sample races (the RSS
 *   slope of the same 550 cycles on L0 read -0.19 to 2.73 KiB/cycle).
 * - compaction on every full GC (--compact-on-every-full-gc), the one before
 *   each sample included: V8 otherwise compacts by its own heuristics, so a
 *   flat heap in use (20.5 MiB in the x86 lab) sits on 94 to 96 committed
 *   256 KiB pages, one more taken at some cycle and given back at another;
 *   RSS follows each page (anonymous memory moved with it, 16 KiB a cycle as
 *   the page filled, then 512 KiB at once when it went). One page taken late
 *   and kept read as 1.5 KiB/cycle on a 500-cycle fit; given back before the
 *   end, as -0.37.
 * - no bytecode flushing (--no-flush-bytecode): V8 drops the bytecode of a
 *   function not run for 5 full GCs (--bytecode-old-age), and the soak makes
 *   one full GC a cycle, so what runs every few cycles (timers, heartbeats)
 *   was dropped and compiled again: the x86 lab's heap in use fell 165 KiB
 *   at cycles 29, 30 and 38 and came back, which over a 60-cycle run read
 *   as 1.02 KiB/cycle on a heap that did not grow.
 * The child also gets one malloc arena (MALLOC_ARENA_MAX=1): with those flags
 * alone the x86 lab's RSS slope still read 0.76 and 1.52 KiB/cycle on a heap
 * that grew 0.01; with one arena, 0.49.
 * The price is time: a cycle took 453 ms without TurboFan, 352 ms with it
 * (two L1 runs under TCG, so partly run-to-run spread).
 */
export const SOAK_NODE_FLAGS: readonly string[] = [
  '--no-opt',
  '--no-maglev',
  '--single-threaded-gc',
  '--compact-on-every-full-gc',
  '--no-flush-bytecode',
  '--min-semi-space-size=1',
  '--max-semi-space-size=1',
];

/** The soak flags `execArgv` lacks. */
export function missingSoakNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return SOAK_NODE_FLAGS.filter((f) => !execArgv.includes(f));
}
