import { existsSync } from 'node:fs';
import { devicesWithRole, loadProfile, profileFromEnv, type DeviceRole, type HostProfile, type ProfileDevice } from '../host/profile.js';
import { VfioBinder, type BoundDevice } from '../host/vfio-bind.js';
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
    return new LabHost(profile, binder, bound, kprobes, kprobesUnavailable);
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
