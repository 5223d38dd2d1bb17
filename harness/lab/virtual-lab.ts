import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Agent } from '../guest/agent.js';
import { bootGuest, DEFAULT_INTEL_IOMMU, guestDescription, type BootedGuest, type GuestOptions } from '../guest/boot.js';
import type { GuestImage } from '../guest/image.js';
import type { DeviceSpec, MachineDescription, PropValue } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../qemu/topology.js';
import type { TestResult } from '../report/junit.js';
import { cacheDir, repoRoot } from '../util/paths.js';
import { soakBudgetMs } from './soak.js';
import { shellQuote } from '../util/shell.js';
import { VfioUserDevices } from '../vfio-user/attach.js';
import { followJsonLines } from './l1-results.js';
import type { DeviceDescription } from '../vfio-user/description.js';
import { checkVfioUserNeedsCachingMode } from '../vfio-user/preflight.js';
import { withHeartbeat } from '../util/progress.js';

/**
 * The virtual lab: an L1 Linux guest under TCG whose emulated VT-d gives it a
 * real /dev/iommu and vfio-pci. L1's root file system is this machine's own
 * `/`, shared read-only over virtio-9p, so L1 runs the same Node, the same
 * compiled harness and the same reference QEMU (as its L2); a second,
 * writable share brings results and artifacts back.
 */

/** Where the results share appears inside L1 (must exist in the read-only root). */
export const L1_RESULTS_MOUNT = '/mnt';

/** An emulated endpoint on its own root port; the L1 BDF follows from the port order. */
export interface LabDevice {
  /** Short name used in the host profile and test titles. */
  name: string;
  device: Omit<DeviceSpec, 'bus' | 'id'>;
}

/**
 * Endpoints L1 can hand to vfio-pci. None of QEMU's emulated devices has a
 * PASID capability (facts §8); the synthetic vfio-user endpoints add those.
 */
export const DEFAULT_LAB_DEVICES: LabDevice[] = [
  { name: 'e1000e', device: { driver: 'e1000e', romfile: '' } },
  { name: 'igb', device: { driver: 'igb', romfile: '' } },
  { name: 'edu', device: { driver: 'edu' } },
  { name: 'iommu-testdev', device: { driver: 'iommu-testdev' } },
];

/**
 * Synthetic endpoints served over vfio-user from this process (harness/vfio-user):
 * L1's kernel sees them as real PCIe functions, with the PASID capability no
 * emulated device has. They take the root ports after the emulated devices.
 */
export interface LabVfioUserDevice {
  /** Short name used in the host profile and as the QEMU id (`lab-NAME`). */
  name: string;
  /** A built-in description name or JSON path, or a description. */
  device: string | DeviceDescription;
}

export const DEFAULT_VFIO_USER_DEVICES: LabVfioUserDevice[] = [
  { name: 'pasid-endpoint', device: 'pasid-endpoint' },
  { name: 'plain-endpoint', device: 'plain-endpoint' },
  // PASID capability, but DevCap2 without the TLP prefix bits: L1 cannot enable PASID.
  { name: 'pasid-no-tlp-prefix', device: 'pasid-no-tlp-prefix' },
];

/**
 * Devices L1's own drivers own, for the binding tests (tests/lab/host.test.ts,
 * role binding-test in qemu-configs/hosts/virtual-lab.yaml): a virtio-net
 * the binder takes and a killed run must give back, a virtio-net whose link
 * the test brings up, and a virtio-9p function the test mounts (both must be
 * refused). On the root ports after the vfio-user endpoints, so their L1
 * addresses are fixed: l1Bdf(7), l1Bdf(8), l1Bdf(9).
 */
export const BINDING_TEST_SHARE_TAG = 'labshare';
export const BINDING_TEST_DEVICES: LabDevice[] = [
  { name: 'net-down', device: { driver: 'virtio-net-pci', romfile: '' } },
  { name: 'net-up', device: { driver: 'virtio-net-pci', romfile: '' } },
  { name: 'share', device: { driver: 'virtio-9p-pci', fsdev: BINDING_TEST_SHARE_TAG, mount_tag: BINDING_TEST_SHARE_TAG } },
];

/**
 * L1 reserves this many 2 MiB pages at boot (kernel `hugepages=`), so that
 * an L2's RAM can be hugetlb-backed: L1's VT-d driver then maps it with 2 MiB
 * leaves, and L0's QEMU sends the vfio-user server one DMA_MAP per 2 MiB
 * instead of one per 4 KiB page (bench/lab-attach.ts).
 */
export const L1_HUGEPAGES = 320;

/** Free 2 MiB pages on this host (in the lab: L1); 0 without hugetlbfs. */
export function freeHugepages(path = '/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages'): number {
  try {
    return Number(readFileSync(path, 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

/**
 * An L2 description whose RAM comes from 2 MiB pages of the host it runs on
 * (memfd hugetlb=on, no hugetlbfs mount needed), when that host has enough
 * free; otherwise the description unchanged and the reason. With 4 KiB pages
 * a synthetic device's attach costs L0 one vfio-user DMA_MAP per page (about
 * 2 per page were seen: 131,000 for a 256 MB L2, 10 s), with 2 MiB pages
 * about 1,200 (the sub-2 MiB regions below 2 MiB and the BIOS).
 */
export function withHugepageRam(desc: MachineDescription, free = freeHugepages()): { desc: MachineDescription; reason?: string } {
  const mb = desc.memoryMB;
  if (!mb || mb % 2) return { desc, reason: `L2 memory ${String(mb)} MB is not a whole number of 2 MiB pages` };
  if (free < mb / 2) return { desc, reason: `${free} free 2 MiB pages here, L2 needs ${mb / 2}` };
  return {
    desc: {
      ...desc,
      machine: { ...desc.machine, props: { ...desc.machine.props, 'memory-backend': 'l2ram' } },
      objects: [...(desc.objects ?? []), { 'qom-type': 'memory-backend-memfd', id: 'l2ram', size: mb * 1024 * 1024, hugetlb: true, hugetlbsize: 2 * 1024 * 1024 }],
    },
  };
}

/**
 * L1's PCI address of the Nth lab device: each sits alone behind root port
 * rpN, and firmware numbers the ports' buses in order from 1.
 */
export function l1Bdf(index: number): string {
  return `0000:${(index + 1).toString(16).padStart(2, '0')}:00.0`;
}

export interface VirtualLabOptions {
  image: GuestImage;
  /** L0 folder shared writable with L1 (its results and artifacts land here). */
  resultsDir: string;
  devices?: LabDevice[];
  /** vfio-user endpoints on the root ports after `devices` (default DEFAULT_VFIO_USER_DEVICES; [] for none). */
  vfioUser?: LabVfioUserDevice[];
  /** The binding tests' devices (BINDING_TEST_DEVICES) after the vfio-user endpoints (default true). */
  bindingTestDevices?: boolean;
  /** Devices added after the lab devices (each gets one more root port; give them their own bus). */
  extraDevices?: DeviceSpec[];
  /** L1's intel-iommu (default DEFAULT_INTEL_IOMMU; vfio-user devices need caching-mode on). */
  intelIommu?: Record<string, PropValue>;
  memoryMB?: number;
  /** 2 MiB pages L1 reserves at boot (default L1_HUGEPAGES). */
  hugepages?: number;
  readyTimeoutMs?: number;
  /** Log lines of the vfio-user servers. */
  log?: (line: string) => void;
}

/** Folders L1 covers with tmpfs: host paths below them are invisible there. */
const L1_TMPFS = ['/tmp', '/run', '/var/tmp', '/dev/shm'];

/**
 * Extra read-only shares so L1 sees the checkout and the cache at the same
 * paths as L0. The checkout is always shared (a CI clone may live in /tmp);
 * the cache only when it lies below a folder L1 covers with tmpfs.
 */
export function l1Shares(repo = repoRoot, cache = cacheDir()): Array<{ tag: string; path: string }> {
  const masked = (p: string) => L1_TMPFS.some((t) => p === t || p.startsWith(`${t}/`));
  return [{ tag: 'repo', path: repo }, ...(masked(cache) ? [{ tag: 'cache', path: cache }] : [])];
}

/** The root port of the Nth vfio-user device (after the emulated lab devices). */
export function vfioUserBus(o: Pick<VirtualLabOptions, 'devices'>, n: number): string {
  return `rp${(o.devices ?? DEFAULT_LAB_DEVICES).length + n}`;
}

/**
 * L1 as guest options: the lab devices and the vfio-user endpoints on their
 * root ports, the host's / as the read-only root, the results share, and the
 * checkout (and a cache below a tmpfs folder) at their L0 paths.
 * `vfioUser` are the -device specs of the running servers, in the order of `o.vfioUser`.
 */
export function virtualLabDescription(o: VirtualLabOptions, vfioUser: DeviceSpec[] = []): Omit<GuestOptions, 'image'> {
  const devs = o.devices ?? DEFAULT_LAB_DEVICES;
  const binding = o.bindingTestDevices === false ? [] : BINDING_TEST_DEVICES;
  const firstBindingPort = devs.length + vfioUser.length;
  const hugepages = o.hugepages ?? L1_HUGEPAGES;
  return {
    intelIommu: o.intelIommu ?? DEFAULT_INTEL_IOMMU,
    memoryMB: o.memoryMB ?? 3072,
    quiet: true,
    rootShare: {},
    resultsShare: { hostPath: o.resultsDir, guestPath: L1_RESULTS_MOUNT },
    extraShares: l1Shares().map((x) => ({ tag: x.tag, hostPath: x.path, guestPath: x.path })),
    append: hugepages > 0 ? [`hugepages=${hugepages}`] : [],
    globals: [NATIVE_PCIE_HOTPLUG],
    devices: [
      ...rootPorts(devs.length + vfioUser.length + binding.length + (o.extraDevices?.length ?? 0)),
      ...devs.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${i}` }) as DeviceSpec),
      ...vfioUser,
      ...binding.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${firstBindingPort + i}` }) as DeviceSpec),
      ...(o.extraDevices ?? []),
    ],
    // The binding tests' 9p function exports a small read-only folder of the checkout.
    extraArgs: binding.some((d) => d.device.driver === 'virtio-9p-pci')
      ? ['-fsdev', `local,id=${BINDING_TEST_SHARE_TAG},path=${join(repoRoot, 'qemu-configs')},security_model=none,readonly=on`]
      : [],
  };
}

/** L0's environment variables that L1's `harness run` gets too (everything else is L1's own, see runSuites). */
export const L1_PASSED_ENV = ['QEMU_X86_64', 'HARNESS_L2_QEMU_X86_64', 'HARNESS_TIMEOUT_MULTIPLIER', 'HARNESS_SOAK_CYCLES'] as const;

export interface SuiteRunOptions {
  timeoutMs?: number;
  /** L1's `harness run --grep` (a regular expression on L1's full titles). */
  grep?: string;
  /** L1's `harness run --repeat`. */
  repeat?: number;
  env?: Record<string, string>;
  /** Each L1 result as soon as L1 has written it (artifact paths already L0's). */
  onResult?: (r: TestResult) => void;
}

export interface SuiteRun {
  /** Exit status of `harness run` inside L1. */
  status: number;
  results: TestResult[];
  /** What the run printed (also saved as l1-run.log in the results folder). */
  output: string;
  durationMs: number;
}

export class VirtualLab {
  private constructor(
    readonly guest: BootedGuest,
    readonly options: VirtualLabOptions,
    /** The vfio-user servers behind L1's synthetic endpoints (their stats: DMA maps, config reads...). */
    readonly vfioUser: VfioUserDevices,
  ) {}

  get machine(): Machine {
    return this.guest.machine;
  }

  get agent(): Agent {
    return this.guest.agent;
  }

  /**
   * Starts the vfio-user servers, checks the L1 description (caching mode),
   * then boots L1. The servers close only once L1's QEMU has exited, however
   * that happens (stop(), the fixture's shutdown, a crash): with its server
   * gone first, QEMU aborts at the next DMA map.
   */
  static async start(launch: (d: MachineDescription) => Promise<Machine>, o: VirtualLabOptions): Promise<VirtualLab> {
    mkdirSync(o.resultsDir, { recursive: true });
    const servers = new VfioUserDevices(o.log ?? (() => {}));
    let launched: Machine | undefined;
    try {
      const vu = o.vfioUser ?? DEFAULT_VFIO_USER_DEVICES;
      for (const [i, v] of vu.entries()) await servers.add(v.device, { id: `lab-${v.name}`, bus: vfioUserBus(o, i) });
      const guestOptions: GuestOptions = { image: o.image, ...virtualLabDescription(o, servers.specs()) };
      const bad = checkVfioUserNeedsCachingMode(guestDescription(guestOptions));
      if (bad) throw bad;
      const guest = await bootGuest(
        async (desc) => {
          launched = await launch(desc);
          // Never before QEMU is gone; the deadline only bounds the watcher.
          launched.waitExit(24 * 3600_000).then(() => servers.close(), () => {});
          return launched;
        },
        guestOptions,
        { readyTimeoutMs: o.readyTimeoutMs ?? 120_000 },
      );
      return new VirtualLab(guest, o, servers);
    } catch (e) {
      // A launched L1 is the launcher's (its fixture shuts it down); the watcher closes the servers after it.
      if (!launched) await servers.close();
      throw e;
    }
  }

  /** Shuts L1 down, then closes the vfio-user servers (that order; see start()). Idempotent. */
  async stop(): Promise<void> {
    await this.machine.shutdown();
    await this.vfioUser.close();
  }

  /** An L1 path on the results share, as seen from L0. */
  l0Path(l1Path: string): string {
    return l1Path.startsWith(L1_RESULTS_MOUNT) ? join(this.options.resultsDir, l1Path.slice(L1_RESULTS_MOUNT.length)) : l1Path;
  }

  /**
   * Runs `harness run` inside L1 on the given suites, exactly as on a lab
   * machine, with the virtual lab's host profile; returns L1's results with
   * artifact paths translated to L0's.
   */
  async runSuites(suites: string[], opts: SuiteRunOptions = {}): Promise<SuiteRun> {
    const env: Record<string, string> = {
      PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      HOME: process.env.HOME ?? '/root',
      HARNESS_CACHE_DIR: cacheDir(),
      HARNESS_ARTIFACTS: `${L1_RESULTS_MOUNT}/artifacts`,
      HARNESS_JUNIT: `${L1_RESULTS_MOUNT}/junit.xml`,
      HARNESS_RESULTS_JSON: `${L1_RESULTS_MOUNT}/results.json`,
      HARNESS_RESULTS_JSONL: `${L1_RESULTS_MOUNT}/results.jsonl`,
      HARNESS_HOST_PROFILE: join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab.yaml'),
      HARNESS_VIRTUAL_LAB: '1',
      // L1's root (and so the cache) is read-only; its /run is tmpfs.
      HARNESS_VFIO_JOURNAL: '/run/harness-vfio-journal.jsonl',
      // The guest image is L0's; L1 never boots guests of its own.
      HARNESS_SKIP_IMAGES: '1',
      // The user's QEMU for L0, and the one the lab suites run as L2, reach L1 as they reached L0.
      ...Object.fromEntries(L1_PASSED_ENV.filter((k) => process.env[k]).map((k) => [k, process.env[k]!])),
      ...opts.env,
    };
    const args = [...suites.flatMap((s) => ['--suite', s]), ...(opts.grep ? ['--grep', opts.grep] : []), ...(opts.repeat && opts.repeat > 1 ? ['--repeat', String(opts.repeat)] : [])];
    const cmd =
      `cd ${shellQuote(repoRoot)} && exec env -i ${Object.entries(env).map(([k, v]) => shellQuote(`${k}=${v}`)).join(' ')} ` +
      `node --enable-source-maps dist/harness/cli.js run ${args.map(shellQuote).join(' ')}`;
    const t0 = Date.now();
    const toL0 = (x: TestResult): TestResult => (x.artifactsDir ? { ...x, artifactsDir: this.l0Path(x.artifactsDir) } : x);
    // L1 appends each result as it finishes; they reach the caller live, and they are
    // what is left of a run that crashed before writing results.json.
    const jsonl = join(this.options.resultsDir, 'results.jsonl');
    rmSync(jsonl, { force: true });
    const streamed: TestResult[] = [];
    const follow = followJsonLines(jsonl, (v) => {
      const x = toL0(v as TestResult);
      streamed.push(x);
      opts.onResult?.(x);
    });
    let r: Awaited<ReturnType<Agent['run']>>;
    try {
      r = await withHeartbeat(`L1's harness run (${suites.join(', ')})`, () => this.agent.run(cmd, { timeoutMs: opts.timeoutMs ?? 20 * 60_000 + soakBudgetMs() }), {
        lastLabel: 'results so far',
        last: () => `${streamed.length}${streamed.length ? `, the last ${streamed.at(-1)!.state}: ${streamed.at(-1)!.title}` : ''}`,
      });
    } finally {
      follow.stop();
    }
    const output = r.stdout + (r.stderr ? `\n--- stderr ---\n${r.stderr}` : '');
    writeFileSync(join(this.options.resultsDir, 'l1-run.log'), output);
    const file = join(this.options.resultsDir, 'results.json');
    const results: TestResult[] = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as TestResult[]).map(toL0) : streamed;
    return { status: r.status, results, output, durationMs: Date.now() - t0 };
  }
}
