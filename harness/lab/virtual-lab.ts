import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Agent } from '../guest/agent.js';
import { bootGuest, DEFAULT_INTEL_IOMMU, type BootedGuest } from '../guest/boot.js';
import type { GuestImage } from '../guest/image.js';
import type { DeviceSpec, MachineDescription } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../qemu/topology.js';
import type { TestResult } from '../report/junit.js';
import { cacheDir, repoRoot } from '../util/paths.js';

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
  /** Devices added after the lab devices, e.g. vfio-user endpoints (with their own bus). */
  extraDevices?: DeviceSpec[];
  memoryMB?: number;
  readyTimeoutMs?: number;
}

export function virtualLabDescription(o: VirtualLabOptions): { append: string[]; devices: DeviceSpec[]; extraArgs: string[]; globals: MachineDescription['globals'] } {
  const devs = o.devices ?? DEFAULT_LAB_DEVICES;
  return {
    append: ['harness.root=9p', `harness.results=${L1_RESULTS_MOUNT}`],
    globals: [NATIVE_PCIE_HOTPLUG],
    devices: [
      ...rootPorts(devs.length + (o.extraDevices?.length ?? 0)),
      ...devs.map((d, i) => ({ ...d.device, id: `lab-${d.name}`, bus: `rp${i}` }) as DeviceSpec),
      ...(o.extraDevices ?? []),
      { driver: 'virtio-9p-pci', fsdev: 'hostroot', mount_tag: 'hostroot' },
      { driver: 'virtio-9p-pci', fsdev: 'results', mount_tag: 'results' },
    ],
    extraArgs: [
      '-fsdev', 'local,id=hostroot,path=/,security_model=none,readonly=on',
      '-fsdev', `local,id=results,path=${o.resultsDir},security_model=none`,
    ],
  };
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
  ) {}

  get machine(): Machine {
    return this.guest.machine;
  }

  get agent(): Agent {
    return this.guest.agent;
  }

  static async start(launch: (d: MachineDescription) => Promise<Machine>, o: VirtualLabOptions): Promise<VirtualLab> {
    mkdirSync(o.resultsDir, { recursive: true });
    const d = virtualLabDescription(o);
    const guest = await bootGuest(
      launch,
      {
        image: o.image,
        intelIommu: DEFAULT_INTEL_IOMMU,
        memoryMB: o.memoryMB ?? 3072,
        quiet: true,
        append: d.append,
        devices: d.devices,
        globals: d.globals,
        extraArgs: d.extraArgs,
      },
      { readyTimeoutMs: o.readyTimeoutMs ?? 120_000 },
    );
    return new VirtualLab(guest, o);
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
  async runSuites(suites: string[], opts: { timeoutMs?: number; grep?: string; env?: Record<string, string> } = {}): Promise<SuiteRun> {
    const env: Record<string, string> = {
      PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      HOME: process.env.HOME ?? '/root',
      HARNESS_CACHE_DIR: cacheDir(),
      HARNESS_ARTIFACTS: `${L1_RESULTS_MOUNT}/artifacts`,
      HARNESS_JUNIT: `${L1_RESULTS_MOUNT}/junit.xml`,
      HARNESS_RESULTS_JSON: `${L1_RESULTS_MOUNT}/results.json`,
      HARNESS_HOST_PROFILE: join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab.yaml'),
      HARNESS_VIRTUAL_LAB: '1',
      // L1's root (and so the cache) is read-only; its /run is tmpfs.
      HARNESS_VFIO_JOURNAL: '/run/harness-vfio-journal.jsonl',
      // The guest image is L0's; L1 never boots guests of its own.
      HARNESS_SKIP_IMAGES: '1',
      ...(process.env.QEMU_X86_64 ? { QEMU_X86_64: process.env.QEMU_X86_64 } : {}),
      ...opts.env,
    };
    const args = [...suites.flatMap((s) => ['--suite', s]), ...(opts.grep ? ['--grep', opts.grep] : [])];
    const cmd =
      `cd ${repoRoot} && exec env -i ${Object.entries(env).map(([k, v]) => `${k}='${v}'`).join(' ')} ` +
      `node --enable-source-maps dist/harness/cli.js run ${args.map((a) => `'${a}'`).join(' ')}`;
    const t0 = Date.now();
    const r = await this.agent.run(cmd, { timeoutMs: opts.timeoutMs ?? 20 * 60_000 });
    const output = r.stdout + (r.stderr ? `\n--- stderr ---\n${r.stderr}` : '');
    writeFileSync(join(this.options.resultsDir, 'l1-run.log'), output);
    const file = join(this.options.resultsDir, 'results.json');
    const results: TestResult[] = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as TestResult[]) : [];
    for (const x of results) if (x.artifactsDir) x.artifactsDir = this.l0Path(x.artifactsDir);
    return { status: r.status, results, output, durationMs: Date.now() - t0 };
  }
}
