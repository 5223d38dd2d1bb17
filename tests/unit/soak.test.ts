import { expect } from 'chai';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { skipBecause } from '../../harness/report/skip.js';
import { defaultTraceEventsPath, TraceFormats } from '../../harness/trace/formats.js';
import { repoRoot } from '../../harness/util/paths.js';
import { linearSlope, type SoakSample, soakCycles, soakFigures, soakWarmup } from '../../harness/lab/soak.js';
import { TraceWindow } from '../../harness/lab/trace-window.js';
import { anonKiB, collectGarbage, fdsOf, rssKiB } from '../../harness/util/process-stats.js';

/** A soak's samples: RSS rising `kibPerCycle` with +-`noise` KiB of jitter (seeded), a GC-like step at `stepAt`. */
function samples(n: number, kibPerCycle: number, opts: { noise?: number; stepAt?: number; fdsAt?: number } = {}): SoakSample[] {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) * 2 - 1;
  return Array.from({ length: n }, (_, i) => ({
    cycle: i + 1,
    liveIds: 0,
    qemuFds: 40 + (opts.fdsAt !== undefined && i >= opts.fdsAt ? 1 : 0),
    qemuRssKiB: 90_000,
    harnessFds: 30,
    harnessHeapKiB: 20_000,
    harnessRssKiB: Math.round(120_000 + kibPerCycle * i + (opts.noise ?? 0) * rnd() + (opts.stepAt !== undefined && i >= opts.stepAt ? 2048 : 0)),
    traceLines: 10 + 12 * i,
    ms: 400,
  }));
}

describe('soak figures', () => {
  it('the least-squares slope of a line is its slope; of fewer than two distinct points an error', () => {
    expect(linearSlope([1, 2, 3, 4], [3, 5, 7, 9])).to.equal(2);
    expect(linearSlope([1, 2, 3], [5, 5, 5])).to.equal(0);
    expect(() => linearSlope([1], [1])).to.throw(/two or more points/);
    expect(() => linearSlope([2, 2], [1, 3])).to.throw(/distinct x/);
  });

  it('500 cycles: a 2 KiB/cycle leak shows through 64 KiB of jitter; none reads below 1 KiB/cycle; a warm-up step is left out', () => {
    const leak = soakFigures(samples(500, 2, { noise: 64 }));
    expect(leak.warmup).to.equal(50);
    expect(leak.harnessRssSlopeKiB).to.be.within(1.8, 2.2);
    const flat = soakFigures(samples(500, 0, { noise: 64, stepAt: 20 }));
    expect(Math.abs(flat.harnessRssSlopeKiB)).to.be.below(1);
    expect(flat.traceLinesPerCycle).to.equal(12);
  });

  it('100 cycles (npm test): warm-up 33, the slope fitted on the last 67; an fd gained is counted', () => {
    expect(soakWarmup(100)).to.equal(33);
    const f = soakFigures(samples(100, 0, { noise: 16, fdsAt: 30 }));
    expect(f.warmup).to.equal(33);
    expect(Math.abs(f.harnessRssSlopeKiB)).to.be.below(1);
    expect(soakFigures(samples(100, 2, { noise: 16 })).harnessRssSlopeKiB, 'a 2 KiB/cycle leak over 100 cycles').to.be.within(1.8, 2.2);
    expect(f.qemuFdsLeaked).to.equal(1);
    expect(f.harnessFdsLeaked).to.equal(0);
  });

  it('HARNESS_SOAK_CYCLES: a whole number of at least 2, else an error naming it', () => {
    expect(soakCycles({})).to.equal(100);
    expect(soakCycles({ HARNESS_SOAK_CYCLES: '500' })).to.equal(500);
    expect(() => soakCycles({ HARNESS_SOAK_CYCLES: '1.5' })).to.throw(/HARNESS_SOAK_CYCLES .* not "1.5"/);
  });

  it("this process's RSS and fds read from /proc, and a forced GC lets go of garbage", () => {
    expect(rssKiB('self')).to.be.greaterThan(1000);
    // Node's heap is anonymous memory: a live process has megabytes of it, never more than its RSS.
    const anon = anonKiB('self');
    expect(anon).to.be.greaterThan(1000);
    expect(anon).to.be.at.most(rssKiB('self') + 1024);
    expect(fdsOf('self')).to.be.greaterThan(2);
    collectGarbage();
    const before = process.memoryUsage().heapUsed;
    let junk: number[][] | undefined = Array.from({ length: 200 }, () => Array.from({ length: 1000 }, (_, i) => i));
    expect(junk.length).to.equal(200);
    junk = undefined;
    collectGarbage();
    expect(process.memoryUsage().heapUsed - before, 'heap left after the GC').to.be.below(512 * 1024);
  });
});

describe('soak trace window (a real three-cycle hot-plug capture from the virtual lab)', () => {
  it('each window models only the lines since the last, one cycle each: one HWPT, nothing left live; a line half written waits', async function () {
    const path = defaultTraceEventsPath();
    if (!existsSync(path)) skipBecause(this, `no trace-events-all at ${path} (reference QEMU not installed)`);
    const formats = await TraceFormats.load(path);
    const lines = readFileSync(join(repoRoot, 'tests', 'fixtures', 'trace', 'l1', 'no-viommu-hotplug-3-cycles.log'), 'utf8')
      .split('\n')
      .filter(Boolean);
    // Cycles end where QEMU lets go of its iommufd.
    const ends = lines.flatMap((l, i) => (l.includes('iommufd_backend_disconnect') ? [i + 1] : []));
    expect(ends, 'cycles in the capture').to.have.length(3);
    const dir = mkdtempSync(join(tmpdir(), 'soak-window-'));
    try {
      const file = join(dir, 'trace.log');
      writeFileSync(file, '');
      const w = new TraceWindow(file, formats);
      let from = 0;
      for (const [c, end] of ends.entries()) {
        const chunk = `${lines.slice(from, end).join('\n')}\n`;
        // The next cycle's first line, half written, rides along.
        const half = lines[end]?.slice(0, 20) ?? '';
        appendFileSync(file, chunk.slice(c === 0 ? 0 : 20) + half);
        const m = w.next();
        expect(m.hwptAllocs, `cycle ${c + 1}: HWPT allocations`).to.have.length(1);
        expect(m.liveObjects(), `cycle ${c + 1}: objects left live`).to.deep.equal([]);
        expect(w.lines).to.equal(end);
        from = end;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('TraceWindow.skip passes over what is written so far: the next window models only what follows', async function () {
    const path = defaultTraceEventsPath();
    if (!existsSync(path)) skipBecause(this, `no trace-events-all at ${path}`);
    const formats = await TraceFormats.load(path);
    const text = readFileSync(join(repoRoot, 'tests', 'fixtures', 'trace', 'l1', 'no-viommu-hotplug-3-cycles.log'), 'utf8');
    const lines = text.split('\n').filter(Boolean);
    const end = lines.findIndex((l) => l.includes('iommufd_backend_disconnect')) + 1;
    const dir = mkdtempSync(join(tmpdir(), 'soak-window-'));
    try {
      const file = join(dir, 'trace.log');
      writeFileSync(file, `${lines.slice(0, end).join('\n')}\n`);
      const w = new TraceWindow(file, formats);
      w.skip();
      expect(w.lines, 'lines skipped').to.equal(end);
      expect(w.next().hwptAllocs, 'nothing written since the skip').to.have.length(0);
      appendFileSync(file, `${lines.slice(end).join('\n')}\n`);
      // The two cycles after the first: two HWPTs, where the whole trace has three.
      expect(w.next().hwptAllocs, 'HWPTs after the skip').to.have.length(2);
      expect(w.lines).to.equal(lines.length);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
