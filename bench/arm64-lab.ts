/**
 * Time in the arm64 virtual lab, beside the x86 (VT-d) lab in the same run
 * (issue 10, part 5): each L1's launch to its agent's first answer, and
 * inside L1 an L2 with a cold-plugged vfio-pci e1000e, from its start to the
 * iommufd calls that matter. The arm64 L2 runs `-accel kvm` with arm-smmuv3
 * accel=on inside the TCG L1; the x86 L2 runs under TCG inside the TCG L1.
 *
 * Inside L1 the times come from one clock: the bench's own Date.now() just
 * before it spawns L2, and L2's `-msg timestamp=on` trace prefixes, both
 * L1's realtime clock. The milestones are read from the trace model, so an
 * event only counts once the model has it with its role (the nested HWPT:
 * hwpt_type 2 on the vIOMMU, after the vdevice).
 *
 * The same file runs inside L1 (`node dist/bench/arm64-lab.js --in-l1 arm64|x86 ...`):
 * binds the e1000e, launches the L2s, prints JSON.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { findGuestImage } from '../harness/guest/image.js';
import { loadProfile, profileFromEnv } from '../harness/host/profile.js';
import { VfioBinder } from '../harness/host/vfio-bind.js';
import { iommufdModel, l2Description, probeL2, type L2Spec } from '../harness/lab/l2.js';
import { ARM64_LAB_PLATFORM, arm64LabImage } from '../harness/lab/platforms/arm64.js';
import { VirtualLab, withHugepageRam } from '../harness/lab/virtual-lab.js';
import type { MachineDescription } from '../harness/qemu/argv.js';
import { Machine } from '../harness/qemu/machine.js';
import type { IommufdModel } from '../harness/trace/model.js';
import type { EventRecord } from '../harness/trace/parse.js';
import { sleep } from '../harness/util/deadline.js';
import { artifactsRoot, cacheDir, repoRoot } from '../harness/util/paths.js';
import { shellQuote } from '../harness/util/shell.js';
import { loadConfig } from '../harness/viommu/configs.js';
import { median, type BenchResult, type BenchRow } from './stats.js';

/** L1 boots of each platform, interleaved so that the host's load falls on both alike. */
const L1_BOOTS = 3;
/** Paused L2 launches per lab. */
const L2_REPS = 5;
/** Booted arm64 L2s (UEFI, then the kernel probing its SMMU). */
const L2_BOOTS = 3;
const DEVICE = 'e1000e';
/** The booted L2's RAM: UEFI and the harness kernel with its initramfs (the prototype's 256 MB). */
const BOOTED_L2_MB = 256;

// --- milestones in a trace ---------------------------------------------------

/** Milliseconds from `startMs` (the host's Date.now() before the spawn) to the trace events that matter. */
export interface L2Milestones {
  /** The first successful HWPT allocation (x86: the IOAS's domain; SMMUv3 accel: the NEST_PARENT parent). */
  firstHwptMs?: number;
  /** IOMMU_VIOMMU_ALLOC answered 0. */
  viommuMs?: number;
  /** IOMMU_VDEVICE_ALLOC answered 0 (L2's guest kernel programmed the device's STE). */
  vdevMs?: number;
  /** The first nested HWPT on the vIOMMU after the vdevice (hwpt_type 2, the guest's stage-1 STE). */
  nestedMs?: number;
}

function msAfter(r: EventRecord, startMs: number): number {
  if (r.time === undefined) throw new Error(`trace line ${r.line} has no time prefix (L2 needs -msg timestamp=on): ${r.raw}`);
  const t = Date.parse(r.time);
  if (Number.isNaN(t)) throw new Error(`trace line ${r.line}: time ${JSON.stringify(r.time)} is not ISO-8601`);
  return t - startMs;
}

export function l2Milestones(model: IommufdModel, startMs: number): L2Milestones {
  const out: L2Milestones = {};
  const hwpt = model.hwptAllocs.find((h) => h.ok);
  if (hwpt) out.firstHwptMs = msAfter(hwpt.record, startMs);
  const viommu = model.viommus.find((v) => v.ok);
  if (!viommu) return out;
  out.viommuMs = msAfter(viommu.record, startMs);
  const vdev = model.vdevices.find((v) => v.ok && v.viommuId === viommu.id);
  if (!vdev) return out;
  out.vdevMs = msAfter(vdev.record, startMs);
  const nested = model.hwptAllocs.find((h) => h.ok && h.role === 'nested' && h.ptKind === 'viommu' && h.ptId === viommu.id && h.record.line > vdev.record.line);
  if (nested) out.nestedMs = msAfter(nested.record, startMs);
  return out;
}

// --- inside L1 ---------------------------------------------------------------

export interface L1Timings {
  /** Per paused L2: start to QMP ready, and its milestones. */
  paused: Array<{ qmpReadyMs: number } & L2Milestones>;
  /** Per booted L2 (arm64 only). */
  booted: Array<{ qmpReadyMs: number } & L2Milestones>;
}

/** Polls L2's trace until `done` holds, or fails naming what the trace had by then. */
async function waitForMilestone(m: Machine, startMs: number, done: (x: L2Milestones) => boolean, what: string, ms: number): Promise<L2Milestones> {
  const end = Date.now() + ms;
  for (;;) {
    const x = l2Milestones(await iommufdModel(m), startMs);
    if (done(x)) return x;
    if (m.exit || Date.now() > end) {
      throw new Error(
        `${m.name}: no ${what} ${m.exit ? `before QEMU ended (${m.exit.text})` : `within ${ms} ms`}; milestones so far ${JSON.stringify(x)}\n${m.stderrTail()}`,
      );
    }
    // The times are the trace's own; polling less often only spares L1's two vCPUs (L2 runs on them).
    await sleep(250);
  }
}

async function timedL2(desc: MachineDescription, name: string, binary: Machine['binary'], done: (x: L2Milestones) => boolean, what: string, ms: number) {
  const startMs = Date.now();
  const m = await Machine.launch(desc, { name, binary, readyTimeoutMs: 180_000 });
  try {
    const qmpReadyMs = Date.now() - startMs;
    return { qmpReadyMs, ...(await waitForMilestone(m, startMs, done, what, ms)) };
  } finally {
    await m.shutdown();
  }
}

async function insideL1(lab: 'arm64' | 'x86', reps: number, boots: number): Promise<L1Timings> {
  const profile = loadProfile(profileFromEnv() ?? (lab === 'arm64' ? 'virtual-lab-smmuv3' : 'virtual-lab'));
  const bdf = profile.devices.find((d) => d.name === DEVICE)?.bdf;
  if (!bdf) throw new Error(`host profile ${profile.name} has no device named ${DEVICE}`);
  const binder = new VfioBinder(profile, process.env.HARNESS_VFIO_JOURNAL ? { journal: process.env.HARNESS_VFIO_JOURNAL } : {});
  binder.installSignalHandlers();
  await binder.bind([bdf]);
  try {
    const arch = lab === 'arm64' ? 'aarch64' : 'x86_64';
    const probe = await probeL2(arch);
    // The x86 L2 has no vIOMMU (L1's emulated VT-d has no nesting): its first HWPT is the IOAS's own.
    const config = loadConfig(lab === 'arm64' ? 'arm-smmuv3-accel' : 'no-viommu-q35');
    const describe = (memoryMB?: number): MachineDescription => {
      const spec: L2Spec = { config, devices: [{ bdf, id: 'hostdev0' }], ...(memoryMB ? { memoryMB } : {}) };
      const { desc } = withHugepageRam(l2Description(spec, probe));
      // As LabFixture.launchL2: KVM with the host's own CPU where the config needs KVM.
      return lab === 'arm64' ? { ...desc, accel: 'kvm', cpu: 'host' } : desc;
    };
    const out: L1Timings = { paused: [], booted: [] };
    const want = lab === 'arm64' ? (x: L2Milestones) => x.viommuMs !== undefined : (x: L2Milestones) => x.firstHwptMs !== undefined;
    const wantWhat = lab === 'arm64' ? 'IOMMU_VIOMMU_ALLOC' : 'HWPT allocation';
    for (let i = 0; i < reps; i++) out.paused.push(await timedL2(describe(), `l2-paused-${i}`, probe.binary, want, wantWhat, 120_000));
    if (lab !== 'arm64' || boots === 0) return out;
    const image = findGuestImage('aarch64');
    if (!image.ok) throw new Error(`booted L2: ${image.reason}`);
    const booted: MachineDescription = {
      ...describe(BOOTED_L2_MB),
      paused: false,
      // A shell on the console: the guest stays up once booted (the nested HWPT comes while its kernel probes the device).
      kernel: { path: image.image.kernel, initrd: image.image.initrd, append: 'console=ttyAMA0 acpi=force panic=-1 loglevel=4 harness.role=shell' },
      serial: true,
    };
    booted.extraArgs = [...(booted.extraArgs ?? []), '-no-reboot'];
    for (let i = 0; i < boots; i++)
      out.booted.push(await timedL2(booted, `l2-booted-${i}`, probe.binary, (x) => x.nestedMs !== undefined, 'nested HWPT', 180_000));
    return out;
  } finally {
    binder.restoreAll();
  }
}

// --- L0 ----------------------------------------------------------------------

/** The command that runs this file inside L1, with the environment a lab run gets there (VirtualLab.runSuites). */
function inL1Command(lab: VirtualLab, args: string[]): string {
  const p = lab.platform;
  const env: Record<string, string> = {
    PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
    HOME: process.env.HOME ?? '/root',
    HARNESS_CACHE_DIR: cacheDir(),
    HARNESS_ARTIFACTS: `${p.resultsMount}/artifacts`,
    HARNESS_HOST_PROFILE: p.hostProfile,
    HARNESS_VIRTUAL_LAB: '1',
    HARNESS_VFIO_JOURNAL: '/run/harness-vfio-journal.jsonl',
    ...Object.fromEntries(p.passedEnv.filter((k) => process.env[k]).map((k) => [k, process.env[k]!])),
    ...p.l1Env,
  };
  return `cd ${shellQuote(repoRoot)} && exec env -i ${Object.entries(env)
    .map(([k, v]) => shellQuote(`${k}=${v}`))
    .join(' ')} node --enable-source-maps dist/bench/arm64-lab.js --in-l1 ${args.map(shellQuote).join(' ')}`;
}

async function runInL1(lab: VirtualLab, args: string[]): Promise<L1Timings> {
  const res = await lab.agent.run(inL1Command(lab, args), { timeoutMs: 20 * 60_000 });
  const last = res.stdout.trim().split('\n').at(-1) ?? '';
  if (res.status !== 0 || !last.startsWith('{'))
    throw new Error(`L1 bench (${args.join(' ')}) exited ${res.status}:\n${res.stdout.slice(-3000)}\n${res.stderr.slice(-3000)}`);
  return JSON.parse(last) as L1Timings;
}

/** The values of one milestone, failing where a run lacks it (waitForMilestone only returns once it is there). */
function column(rows: L1Timings['paused'], key: keyof L2Milestones | 'qmpReadyMs'): number[] {
  return rows.map((r, i) => {
    const v = r[key];
    if (v === undefined) throw new Error(`L2 run ${i} has no ${key}: ${JSON.stringify(r)}`);
    return v;
  });
}

const samples = (xs: number[]) => xs.map(Math.round).join(' ');

export async function benchArm64Lab(): Promise<BenchResult> {
  const name = 'arm64 virtual lab beside the x86 lab: L1 to agent, L2 to IOMMU_VIOMMU_ALLOC, booted L2 to its nested HWPT';
  const x86Image = findGuestImage('x86_64');
  const armImage = findGuestImage('aarch64');
  if (!x86Image.ok || !armImage.ok)
    return { name, rows: [], notes: [`not measured: ${[x86Image, armImage].flatMap((x) => (x.ok ? [] : [x.reason])).join('; ')}`] };
  const dir = join(artifactsRoot(), 'bench', `arm64-lab-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const launcher = (label: string) => (d: MachineDescription) => Machine.launch(d, { name: label, artifactsDir: join(dir, label) });
  const armOptions = { platform: ARM64_LAB_PLATFORM, image: armImage.image, resultsDir: join(dir, 'arm64-results') };
  // The IORT dump's L1 gets the results share too (same layout as the lab's): its folder must exist.
  mkdirSync(armOptions.resultsDir, { recursive: true });
  const prepared = await arm64LabImage(launcher('arm64-iort-dump'), armImage.image, armOptions);
  const l1 = { x86: [] as number[], arm64: [] as number[] };
  let x86: L1Timings | undefined;
  let arm64: L1Timings | undefined;
  for (let i = 0; i < L1_BOOTS; i++) {
    const vtd = await VirtualLab.start(launcher(`x86-l1-${i}`), { image: x86Image.image, resultsDir: join(dir, 'x86-results') });
    try {
      l1.x86.push(vtd.guest.agentReadyMs);
      if (i === 0) x86 = await runInL1(vtd, ['x86', String(L2_REPS), '0']);
    } finally {
      await vtd.stop();
    }
    const arm = await VirtualLab.start(launcher(`arm64-l1-${i}`), { ...armOptions, image: prepared.image });
    try {
      l1.arm64.push(arm.guest.agentReadyMs);
      if (i === 0) arm64 = await runInL1(arm, ['arm64', String(L2_REPS), String(L2_BOOTS)]);
    } finally {
      await arm.stop();
    }
  }
  const x86Hwpt = column(x86!.paused, 'firstHwptMs');
  const armQmp = column(arm64!.paused, 'qmpReadyMs');
  const armParent = column(arm64!.paused, 'firstHwptMs');
  const armViommu = column(arm64!.paused, 'viommuMs');
  const bootViommu = column(arm64!.booted, 'viommuMs');
  const bootVdev = column(arm64!.booted, 'vdevMs');
  const bootNested = column(arm64!.booted, 'nestedMs');
  const m = {
    x86L1: median(l1.x86),
    armL1: median(l1.arm64),
    x86Hwpt: median(x86Hwpt),
    armViommu: median(armViommu),
    bootViommu: median(bootViommu),
    bootNested: median(bootNested),
  };
  const rows: BenchRow[] = [
    { what: `x86 L1 (VT-d, host / over 9p): launch to agent ready (median of ${l1.x86.length})`, value: m.x86L1, unit: 'ms' },
    {
      what: `arm64 L1 (SMMUv3, IORT override, arm64 root over 9p): launch to agent ready (median of ${l1.arm64.length})`,
      value: m.armL1,
      unit: 'ms',
      ratio: { against: 'x86 L1 launch to agent', value: m.armL1 / m.x86L1, target: '<= 15 s', met: m.armL1 <= 15_000 },
    },
    { what: `x86 lab L2 (paused, TCG, cold-plugged e1000e): start to first alloc_hwpt (median of ${x86Hwpt.length})`, value: m.x86Hwpt, unit: 'ms' },
    { what: `arm64 lab L2 (paused, KVM, accel=on, cold-plugged e1000e): start to QMP ready (median of ${armQmp.length})`, value: median(armQmp), unit: 'ms' },
    { what: `arm64 lab L2 (paused): start to the NEST_PARENT alloc_hwpt (median of ${armParent.length})`, value: median(armParent), unit: 'ms' },
    {
      what: `arm64 lab L2 (paused): start to IOMMU_VIOMMU_ALLOC (median of ${armViommu.length})`,
      value: m.armViommu,
      unit: 'ms',
      ratio: { against: 'x86 lab L2 start to first alloc_hwpt', value: m.armViommu / m.x86Hwpt },
    },
    { what: `arm64 lab L2 booted (UEFI + kernel): start to IOMMU_VIOMMU_ALLOC (median of ${bootViommu.length})`, value: m.bootViommu, unit: 'ms' },
    {
      what: `arm64 lab L2 booted: start to its first nested HWPT (median of ${bootNested.length})`,
      value: m.bootNested,
      unit: 'ms',
      ratio: { against: 'the same L2s start to IOMMU_VIOMMU_ALLOC', value: m.bootNested / m.bootViommu, target: '<= 20 s', met: m.bootNested <= 20_000 },
    },
  ];
  const notes = [
    `L1 boots interleaved x86, arm64 (${L1_BOOTS} each); the L2s ran in the first boot of each; times inside L1 are L1's clock (Date.now() before the spawn, L2's -msg timestamp=on)`,
    `raw samples (ms): x86 L1 ${samples(l1.x86)}; arm64 L1 ${samples(l1.arm64)}; x86 L2 first alloc_hwpt ${samples(x86Hwpt)}; arm64 L2 QMP ready ${samples(armQmp)}, IOMMU_VIOMMU_ALLOC ${samples(armViommu)}`,
    `booted arm64 L2 (ms): IOMMU_VIOMMU_ALLOC ${samples(bootViommu)}; alloc_vdev ${samples(bootVdev)}; nested HWPT ${samples(bootNested)}`,
    'the x86 L2 has no vIOMMU (L1’s emulated VT-d has no nesting): its first alloc_hwpt is the IOAS’s own HWPT, made while vfio-pci realizes, as the arm64 L2’s parent is',
    ...(prepared.dumpMs ? [`the IORT override was not cached: reading QEMU's IORT took ${prepared.dumpMs} ms (an extra L1 boot, not in the rows)`] : []),
  ];
  return { name, rows, notes };
}

if (process.argv[2] === '--in-l1' && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const lab = process.argv[3] === 'arm64' ? 'arm64' : 'x86';
  const r = await insideL1(lab, Number(process.argv[4] ?? L2_REPS), Number(process.argv[5] ?? 0));
  await Machine.shutdownAll();
  console.log(JSON.stringify(r));
}
