import { existsSync } from 'node:fs';
import { devicesWithRole, loadProfile, profileFromEnv, type DeviceRole, type HostProfile, type ProfileDevice } from '../host/profile.js';
import { VfioBinder, type BoundDevice } from '../host/vfio-bind.js';
import { probeHwptAlloc, readHwInfo, type HwInfo } from '../host/hwinfo.js';
import { hostPrerequisites, probeHost, type HostPrerequisites, type PrerequisiteName } from '../host/report.js';
import { skipBecause } from '../report/skip.js';
import { KprobeSession } from '../trace/kprobes.js';
import type { HostCaps } from '../trace/oracle.js';

/**
 * The host a lab suite runs on (a lab machine, or the virtual lab's L1): its
 * profile, the devices bound to vfio-pci for the suite, the kernel-side
 * kprobes, and what the host can do. Opened in a suite's before(); anything
 * missing is a skip of the whole suite with the exact reason.
 */
export class LabHost {
  private constructor(
    readonly profile: HostProfile,
    readonly binder: VfioBinder,
    readonly bound: Map<string, BoundDevice>,
    /** Undefined where kprobes cannot be set (with `kprobesUnavailable` saying why). */
    readonly kprobes: KprobeSession | undefined,
    readonly kprobesUnavailable: string | undefined,
    /** What this host can do, each with the exact reason (harness doctor's view). */
    readonly prerequisites: HostPrerequisites,
  ) {}

  /** Why no lab suite can run on this host, or undefined. */
  static unavailableReason(env: NodeJS.ProcessEnv = process.env): string | undefined {
    if (!existsSync('/dev/iommu')) return 'no /dev/iommu: this host exposes no IOMMU through iommufd (the virtual-lab suite runs the lab suites in L1)';
    if (!profileFromEnv(env)) return 'no host profile: set HARNESS_HOST_PROFILE (or `harness run --profile`) to a file in qemu-configs/hosts/';
    if (process.getuid?.() !== 0) return 'lab suites bind devices to vfio-pci and need root';
    return undefined;
  }

  static async open(ctx: Mocha.Context): Promise<LabHost> {
    const why = LabHost.unavailableReason();
    if (why) return skipBecause(ctx, why);
    const profile = loadProfile(profileFromEnv()!);
    // The journal must survive a hard kill of this process; in the virtual lab
    // the cache is on the read-only root, so L1 points it at its own tmpfs.
    const journal = process.env.HARNESS_VFIO_JOURNAL;
    const binder = new VfioBinder(profile, journal ? { journal } : {});
    binder.replayJournal();
    binder.installSignalHandlers();
    const bound = new Map((await binder.bind()).map((b) => [b.bdf, b]));
    const kpWhy = KprobeSession.unavailableReason();
    let kprobes: KprobeSession | undefined;
    let kprobesUnavailable = kpWhy;
    if (!kpWhy) {
      try {
        kprobes = KprobeSession.start();
      } catch (e) {
        kprobesUnavailable = (e as Error).message;
      }
    }
    const prerequisites = hostPrerequisites(await probeHost({ profile }));
    return new LabHost(profile, binder, bound, kprobes, kprobesUnavailable, prerequisites);
  }

  /** Skips the current test unless the host meets `name`, with the doctor's exact reason. */
  require(ctx: Mocha.Context, name: PrerequisiteName): void {
    const p = this.prerequisites[name];
    if (!p.ok) skipBecause(ctx, p.reason);
  }

  /** IOMMU_GET_HW_INFO of a bound device, or a skip saying why it cannot be read. */
  async hwInfo(ctx: Mocha.Context, cdev: string): Promise<HwInfo> {
    const r = await readHwInfo(cdev);
    if (!r.ok) return skipBecause(ctx, `no hw info for ${cdev}: ${r.reason}`);
    return r.value;
  }

  /** The oracle's host capabilities for a device, from its hw info. */
  async hostCaps(ctx: Mocha.Context, cdev: string): Promise<HostCaps> {
    const info = await this.hwInfo(ctx, cdev);
    return { dirtyTracking: (info.outCapabilities & 0x1) !== 0, maxPasidLog2: info.outMaxPasidLog2 };
  }

  /**
   * The kernel's own answer to IOMMU_HWPT_ALLOC with `flags` for this device,
   * asked directly (no QEMU): 0 or a negative errno. It is what QEMU must get
   * back for the same request.
   */
  async kernelAnswer(ctx: Mocha.Context, cdev: string, flags: number): Promise<{ ok: boolean; errno?: string }> {
    const r = await probeHwptAlloc(cdev, [flags]);
    if (!r.ok) return skipBecause(ctx, `cannot ask the kernel directly for flags 0x${flags.toString(16)}: ${r.reason}`);
    const res = r.value.results[0]!;
    return res.ok ? { ok: true } : { ok: false, ...(res.errno ? { errno: res.errno } : {}) };
  }

  /** The first profile device with `role`, or a skip naming the missing role. */
  device(ctx: Mocha.Context, role: DeviceRole): ProfileDevice & { cdev: string } {
    const d = devicesWithRole(this.profile, role).find((x) => this.bound.has(x.bdf));
    if (!d) return skipBecause(ctx, `no device with role ${role} in host profile ${this.profile.name}`);
    return { ...d, cdev: this.bound.get(d.bdf)!.cdev };
  }

  close(): void {
    this.kprobes?.stop();
    this.binder.restoreAll();
  }
}

export type { HostCaps };
