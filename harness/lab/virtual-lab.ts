import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Agent } from '../guest/agent.js';
import { bootGuest, guestDescription, type BootedGuest, type GuestOptions } from '../guest/boot.js';
import type { GuestImage } from '../guest/image.js';
import type { DeviceSpec, MachineDescription, PropValue } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import type { TestResult } from '../report/junit.js';
import { cacheDir, repoRoot } from '../util/paths.js';
import { soakBudgetMs } from './soak.js';
import { shellQuote } from '../util/shell.js';
import { VfioUserDevices } from '../vfio-user/attach.js';
import { followJsonLines } from './l1-results.js';
import { checkVfioUserNeedsCachingMode } from '../vfio-user/preflight.js';
import { withHeartbeat } from '../util/progress.js';
import { vfioUserPort, type LabDevice, type LabPlatform, type LabVfioUserDevice } from './platforms/platform.js';
import { VTD_LAB_PLATFORM } from './platforms/vtd.js';

/**
 * The virtual lab: an L1 Linux guest under TCG whose emulated vIOMMU gives it
 * a real /dev/iommu and vfio-pci, running the lab suites as a lab machine
 * would. One code path for both platforms; what differs (L1's machine, its
 * devices, its root, its host profile, its environment) is a LabPlatform:
 * platforms/vtd.ts (the default) and platforms/arm64.ts.
 */

export type { LabDevice, LabPlatform, LabVfioUserDevice } from './platforms/platform.js';
export {
  BINDING_TEST_DEVICES,
  BINDING_TEST_SHARE_TAG,
  DEFAULT_LAB_DEVICES,
  DEFAULT_VFIO_USER_DEVICES,
  L1_HUGEPAGES,
  L1_PASSED_ENV,
  L1_RESULTS_MOUNT,
  l1Shares,
  virtualLabDescription,
  VTD_LAB_PLATFORM,
} from './platforms/vtd.js';

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
  /** L1's platform (default VTD_LAB_PLATFORM). */
  platform?: LabPlatform;
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

/** The root port of the Nth vfio-user device (after the emulated lab devices). */
export function vfioUserBus(o: Pick<VirtualLabOptions, 'devices' | 'platform'>, n: number): string {
  return vfioUserPort(o.devices ?? labPlatform(o).defaultDevices, n);
}

/** The options' platform: VT-d unless they name one. */
export function labPlatform(o: Pick<VirtualLabOptions, 'platform'>): LabPlatform {
  return o.platform ?? VTD_LAB_PLATFORM;
}

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
      const platform = labPlatform(o);
      const vu = o.vfioUser ?? platform.defaultVfioUser;
      for (const [i, v] of vu.entries()) await servers.add(v.device, { id: `lab-${v.name}`, bus: vfioUserBus(o, i) });
      const guestOptions: GuestOptions = { image: o.image, ...platform.describe(o, servers.specs()) };
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
    const mount = this.platform.resultsMount;
    return l1Path.startsWith(mount) ? join(this.options.resultsDir, l1Path.slice(mount.length)) : l1Path;
  }

  get platform(): LabPlatform {
    return labPlatform(this.options);
  }

  /**
   * Runs `harness run` inside L1 on the given suites, exactly as on a lab
   * machine, with the virtual lab's host profile; returns L1's results with
   * artifact paths translated to L0's.
   */
  async runSuites(suites: string[], opts: SuiteRunOptions = {}): Promise<SuiteRun> {
    const { resultsMount: L1_RESULTS_MOUNT, hostProfile, passedEnv, l1Env } = this.platform;
    const env: Record<string, string> = {
      PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      HOME: process.env.HOME ?? '/root',
      HARNESS_CACHE_DIR: cacheDir(),
      HARNESS_ARTIFACTS: `${L1_RESULTS_MOUNT}/artifacts`,
      HARNESS_JUNIT: `${L1_RESULTS_MOUNT}/junit.xml`,
      HARNESS_RESULTS_JSON: `${L1_RESULTS_MOUNT}/results.json`,
      HARNESS_RESULTS_JSONL: `${L1_RESULTS_MOUNT}/results.jsonl`,
      HARNESS_HOST_PROFILE: hostProfile,
      HARNESS_VIRTUAL_LAB: '1',
      // L1's root (and so the cache) is read-only; its /run is tmpfs.
      HARNESS_VFIO_JOURNAL: '/run/harness-vfio-journal.jsonl',
      // The guest image is L0's; L1 never boots guests of its own.
      HARNESS_SKIP_IMAGES: '1',
      // The user's QEMU for L0, and the one the lab suites run as L2, reach L1 as they reached L0.
      ...Object.fromEntries(passedEnv.filter((k) => process.env[k]).map((k) => [k, process.env[k]!])),
      ...l1Env,
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
