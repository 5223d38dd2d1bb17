/**
 * L2 attach time in the virtual lab: `device_add` of vfio-pci (hot-plug into
 * a paused L2, no vIOMMU) for the synthetic PASID endpoint, which L0 serves
 * over vfio-user, against L1's emulated e1000e, in the same L1 run.
 *
 * Every page L1's VT-d driver maps for L2 becomes, through caching mode, one
 * vfio-user DMA_MAP that L0's QEMU waits for; an e1000e costs L0 nothing of
 * the kind. With L2's RAM on L1's 2 MiB pages (withHugepageRam) a 2 MiB leaf
 * is one DMA_MAP. The bench shows both, and the DMA_MAP count per attach
 * that L0's server saw.
 *
 * L1's vfio-pci resets the device at open and at close. The endpoint offers
 * FLR with immediate readiness, so Linux picks FLR and does not wait; the
 * bench times each reset method in L1 and keeps a row with the secondary bus
 * reset L1 used before (reset_method=bus).
 *
 * The same file runs inside L1 (`node dist/bench/lab-attach.js --in-l1`):
 * binds the two devices, launches L2, times the hot-plugs, prints JSON.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { findGuestImage } from '../harness/guest/image.js';
import { loadProfile, profileFromEnv } from '../harness/host/profile.js';
import { VfioBinder } from '../harness/host/vfio-bind.js';
import { l2Description, spareRootPort, vfioPciDevice, type L2Spec } from '../harness/lab/l2.js';
import { L1_RESULTS_MOUNT, VirtualLab, withHugepageRam } from '../harness/lab/virtual-lab.js';
import { Machine } from '../harness/qemu/machine.js';
import { cacheDir, repoRoot } from '../harness/util/paths.js';
import { loadConfig } from '../harness/viommu/configs.js';
import { probeArch } from '../harness/viommu/probe.js';
import { median, type BenchResult, type BenchRow } from './stats.js';

/** L2 stays paused: its RAM only has to be mapped, so a small L2 keeps 4 KiB runs affordable. */
const L2_MEMORY_MB = 64;
const REPS = 5;
const SYNTHETIC = 'pasid-endpoint';
const PEER = 'e1000e';

type Mode = '2m' | '4k' | '2m-bus';
const MODES: readonly Mode[] = ['2m', '4k', '2m-bus'];
/** Sysfs resets timed per method and device, in the '2m' run. */
const RESET_REPS = 5;

interface L1Result {
  pages: Mode;
  /** L1's reset_method for each device as Linux chose it (its order: device_specific, acpi, flr, af_flr, pm, bus). */
  resetMethods: { synthetic: string; e1000e: string };
  /** Median ms of a sysfs reset by each method the device offers ('2m' run only). */
  resetMs?: { synthetic: Record<string, number>; e1000e: Record<string, number> };
  /** Why 2 MiB pages were not used, when asked for and not used. */
  hugepageProblem?: string;
  memoryMB: number;
  synthetic: number[];
  e1000e: number[];
}

// --- inside L1 --------------------------------------------------------------

async function insideL1(pages: Mode, reps: number): Promise<L1Result> {
  const profile = loadProfile(profileFromEnv() ?? 'virtual-lab');
  const byName = (n: string) => {
    const d = profile.devices.find((x) => x.name === n);
    if (!d) throw new Error(`host profile ${profile.name} has no device named ${n}`);
    return d.bdf;
  };
  const devs = { synthetic: byName(SYNTHETIC), e1000e: byName(PEER) };
  const binder = new VfioBinder(profile, process.env.HARNESS_VFIO_JOURNAL ? { journal: process.env.HARNESS_VFIO_JOURNAL } : {});
  binder.installSignalHandlers();
  await binder.bind(Object.values(devs));
  const sysfs = (bdf: string, f: string) => `/sys/bus/pci/devices/${bdf}/${f}`;
  const methodsOf = (bdf: string) => readFileSync(sysfs(bdf, 'reset_method'), 'utf8').trim();
  const resetMethods = { synthetic: methodsOf(devs.synthetic), e1000e: methodsOf(devs.e1000e) };
  const resetMs = pages === '2m' ? { synthetic: timeResets(devs.synthetic), e1000e: timeResets(devs.e1000e) } : undefined;
  // Diagnostic: 'bus' is how L1 reset the synthetic endpoint before it offered
  // FLR and a PM soft reset. (An empty reset_method is no reset-free baseline:
  // vfio-pci then resets the bus at close, vfio_pci_dev_set_try_reset.)
  const resetMethod = sysfs(devs.synthetic, 'reset_method');
  if (pages === '2m-bus') writeFileSync(resetMethod, 'bus\n');
  let m: Machine | undefined;
  try {
    const spec: L2Spec = { config: loadConfig('no-viommu-q35'), spareRootPorts: 1, memoryMB: L2_MEMORY_MB };
    const plain = l2Description(spec, await probeArch('x86_64'));
    const huge = pages === '4k' ? { desc: plain } : withHugepageRam(plain);
    m = await Machine.launch(huge.desc, { name: `l2-${pages}` });
    const bus = spareRootPort(spec);
    let n = 0;
    const attach = async (bdf: string): Promise<number> => {
      const id = `hp${n++}`;
      const t0 = performance.now();
      await m!.qmp.deviceAdd(vfioPciDevice({ bdf, id }, bus) as never, { timeoutMs: 120_000 });
      const ms = performance.now() - t0;
      await m!.qmp.deviceDel(id, 60_000);
      return ms;
    };
    // The first attach of each pays one-time costs (page faults in QEMU, first open).
    await attach(devs.e1000e);
    await attach(devs.synthetic);
    const out: L1Result = { pages, resetMethods, ...(resetMs && { resetMs }), memoryMB: L2_MEMORY_MB, synthetic: [], e1000e: [], ...(huge.reason && { hugepageProblem: huge.reason }) };
    for (let i = 0; i < reps; i++) {
      out.e1000e.push(await attach(devs.e1000e));
      out.synthetic.push(await attach(devs.synthetic));
    }
    return out;
  } finally {
    await m?.shutdown();
    if (pages === '2m-bus') writeFileSync(resetMethod, 'default\n');
    binder.restoreAll();
  }
}

/** Median ms of `echo 1 > reset` (vfio-pci bound, nobody using the device) for each method the device offers. */
function timeResets(bdf: string): Record<string, number> {
  const methodFile = `/sys/bus/pci/devices/${bdf}/reset_method`;
  const out: Record<string, number> = {};
  try {
    for (const method of readFileSync(methodFile, 'utf8').trim().split(/\s+/).filter(Boolean)) {
      writeFileSync(methodFile, `${method}\n`);
      const xs: number[] = [];
      for (let i = 0; i < RESET_REPS; i++) {
        const t0 = performance.now();
        writeFileSync(`/sys/bus/pci/devices/${bdf}/reset`, '1\n');
        xs.push(performance.now() - t0);
      }
      out[method] = median(xs);
    }
  } finally {
    writeFileSync(methodFile, 'default\n');
  }
  return out;
}

// --- L0 ---------------------------------------------------------------------

export async function benchLabAttach(): Promise<BenchResult> {
  const name = 'virtual lab: L2 attach, synthetic vfio-user endpoint vs e1000e (same L1)';
  const found = findGuestImage('x86_64');
  if (!found.ok) return { name, rows: [], notes: [`not measured: ${found.reason}`] };
  const dir = mkdtempSync(join(tmpdir(), 'bench-lab-attach-'));
  const lab = await VirtualLab.start((d) => Machine.launch(d, { name: 'bench-l1', artifactsDir: join(dir, 'machine') }), {
    image: found.image,
    resultsDir: join(dir, 'results'),
  });
  try {
    const server = lab.vfioUser.get(`lab-${SYNTHETIC}`).server;
    type Run = { r: L1Result; mapsPerAttach: number; functionResetsPerAttach: number; busResetsPerAttach: number };
    const run = async (pages: Mode, reps: number): Promise<Run> => {
      const before = server.stats.dmaMaps;
      const resetsBefore = { fn: server.stats.functionResets, dev: server.stats.resets };
      const env = {
        PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
        HOME: process.env.HOME ?? '/root',
        HARNESS_CACHE_DIR: cacheDir(),
        HARNESS_ARTIFACTS: `${L1_RESULTS_MOUNT}/artifacts`,
        HARNESS_HOST_PROFILE: join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab.yaml'),
        HARNESS_VFIO_JOURNAL: '/run/harness-vfio-journal.jsonl',
        ...(process.env.QEMU_X86_64 ? { QEMU_X86_64: process.env.QEMU_X86_64 } : {}),
      };
      const cmd = `cd ${repoRoot} && exec env -i ${Object.entries(env).map(([k, v]) => `${k}='${v}'`).join(' ')} node dist/bench/lab-attach.js --in-l1 ${pages} ${reps}`;
      const res = await lab.agent.run(cmd, { timeoutMs: 15 * 60_000 });
      const last = res.stdout.trim().split('\n').at(-1) ?? '';
      if (res.status !== 0 || !last.startsWith('{')) throw new Error(`L1 bench (${pages}) exited ${res.status}:\n${res.stdout.slice(-2000)}\n${res.stderr.slice(-2000)}`);
      const r = JSON.parse(last) as L1Result;
      // Only the synthetic device reaches L0's server: its DMA maps and resets per attach
      // (warm-up included; the '2m' run's sysfs resets are taken out). A secondary bus
      // reset in L1 reaches the server as a DEVICE_RESET from L0's QEMU.
      const timed = r.resetMs ? Object.keys(r.resetMs.synthetic) : [];
      const sysfsFn = timed.filter((x) => x === 'flr' || x === 'pm').length * RESET_REPS;
      const sysfsBus = timed.includes('bus') ? RESET_REPS : 0;
      return {
        r,
        mapsPerAttach: (server.stats.dmaMaps - before) / (reps + 1),
        functionResetsPerAttach: (server.stats.functionResets - resetsBefore.fn - sysfsFn) / (reps + 1),
        busResetsPerAttach: (server.stats.resets - resetsBefore.dev - sysfsBus) / (reps + 1),
      };
    };
    const huge = await run('2m', REPS);
    const bus = await run('2m-bus', 3);
    const small = await run('4k', 2);
    const rows: BenchRow[] = [];
    const add = (label: string, x: Run, target?: string) => {
      const peer = median(x.r.e1000e);
      const syn = median(x.r.synthetic);
      const ratio = syn / peer;
      rows.push({ what: `${label}: e1000e attach (median of ${x.r.e1000e.length})`, value: peer, unit: 'ms' });
      rows.push({
        what: `${label}: synthetic attach (median of ${x.r.synthetic.length})`,
        value: syn,
        unit: 'ms',
        ratio: { against: 'e1000e attach', value: ratio, ...(target && { target, met: ratio <= 1.5 }) },
      });
      rows.push({ what: `${label}: vfio-user DMA_MAPs per synthetic attach`, value: x.mapsPerAttach, unit: 'maps' });
    };
    add(`L2 ${L2_MEMORY_MB} MB on 2 MiB pages`, huge, '<= 1.5x');
    add(`2 MiB pages, synthetic reset by secondary bus reset as before FLR (diagnostic)`, bus);
    add(`L2 ${L2_MEMORY_MB} MB on 4 KiB pages`, small);
    for (const [dev, byMethod] of Object.entries(huge.r.resetMs ?? {})) {
      for (const [method, ms] of Object.entries(byMethod)) rows.push({ what: `L1 sysfs reset of ${dev === 'synthetic' ? SYNTHETIC : PEER} by ${method} (median of ${RESET_REPS})`, value: ms, unit: 'ms' });
    }
    const perAttach = (x: Run) => `${x.functionResetsPerAttach} FLR/PM, ${x.busResetsPerAttach} DEVICE_RESET`;
    const notes = [
      'attach = device_add of vfio-pci into a paused L2 without vIOMMU (realize: bind, IOAS, map all RAM, HWPT, attach, device reset); one warm-up attach each first',
      `raw samples (ms): 2m e1000e ${huge.r.e1000e.map(Math.round).join(' ')} / synthetic ${huge.r.synthetic.map(Math.round).join(' ')}; 4k e1000e ${small.r.e1000e.map(Math.round).join(' ')} / synthetic ${small.r.synthetic.map(Math.round).join(' ')}`,
      `L1 reset_method: ${SYNTHETIC} "${huge.r.resetMethods.synthetic}", ${PEER} "${huge.r.resetMethods.e1000e}" (Linux uses the first)`,
      `resets the server saw per synthetic attach: 2m ${perAttach(huge)}; bus ${perAttach(bus)}`,
      'diagnostic row: reset_method=bus is the reset L1 used before the endpoint offered FLR and a PM soft reset',
      ...(huge.r.hugepageProblem ? [`2 MiB pages NOT used: ${huge.r.hugepageProblem}`] : []),
    ];
    return { name, rows, notes };
  } finally {
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--in-l1' && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = process.argv[3];
  const pages: Mode = MODES.find((x) => x === arg) ?? '2m';
  const reps = Number(process.argv[4] ?? REPS);
  const r = await insideL1(pages, reps);
  await Machine.shutdownAll();
  console.log(JSON.stringify(r));
}
