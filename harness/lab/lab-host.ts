import { existsSync } from 'node:fs';
import { devicesWithRole, loadProfile, profileFromEnv, type DeviceRole, type HostProfile, type ProfileDevice } from '../host/profile.js';
import { DeviceLeases, leaseAndBind } from '../host/lease.js';
import { VfioBinder, type BoundDevice } from '../host/vfio-bind.js';
import { decodeSmmuIdr, probeHwptAlloc, readHwInfo, type HwInfo, type Probed } from '../host/hwinfo.js';
import { openKernelAnswers, type KernelAnswers } from '../host/kernel-answers.js';
import { hostPrerequisites, probeHost, type HostPrerequisites, type PrerequisiteName } from '../host/report.js';
import { skipBecause } from '../report/skip.js';
import type { KprobeSession } from '../trace/kprobes.js';
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
    /** The kernel's answers (kprobes, self-checked), or why there are none. */
    readonly kernelAnswers: KernelAnswers,
    /** What this host can do, each with the exact reason (harness doctor's view). */
    readonly prerequisites: HostPrerequisites,
    /** This run's device leases (another run on the machine never takes these). */
    readonly leases: DeviceLeases,
    /** Devices another run held past the lease deadline, with the reason ("device X is leased by run PID N"). */
    readonly leasedElsewhere: Map<string, string>,
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
    // binding-test devices are the binding tests' own (tests/lab/host.test.ts): never held for a suite.
    const suiteDevices = profile.devices.filter((d) => d.role !== 'binding-test').map((d) => d.bdf);
    // A device another run holds is waited for (all at once, one deadline), then left to it:
    // tests that need it skip naming the holder. Leases go after the binder's exit handler.
    const leases = new DeviceLeases();
    const { bound: taken, elsewhere: leasedElsewhere } = await leaseAndBind(binder, leases, suiteDevices);
    const bound = new Map(taken.map((b) => [b.bdf, b]));
    const kernelAnswers = await openKernelAnswers([...bound.values()][0]?.cdev);
    const prerequisites = hostPrerequisites(await probeHost({ profile }));
    return new LabHost(profile, binder, bound, kernelAnswers, prerequisites, leases, leasedElsewhere);
  }

  /** The kprobe session when the kernel's answers are available (self-checked), else undefined. */
  get kprobes(): KprobeSession | undefined {
    return this.kernelAnswers.ok ? this.kernelAnswers.session : undefined;
  }

  /**
   * The kprobe session, or a skip with the exact reason it is missing: for
   * the tests that compare the kernel's answer to QEMU with its direct one.
   * Probes that were set but failed their self-check are not a skip: that is
   * the self-check test's failure, so here it throws.
   */
  requireKernelAnswers(ctx: Mocha.Context): KprobeSession {
    const k = this.kernelAnswers;
    if (k.ok) return k.session;
    if (k.broken) throw new Error(`the kernel's answers cannot be trusted on this host: ${k.reason}`);
    return skipBecause(ctx, k.reason);
  }

  /** Skips the current test unless the host meets `name`, with the doctor's exact reason. */
  require(ctx: Mocha.Context, name: PrerequisiteName): void {
    const p = this.prerequisites[name];
    if (!p.ok) skipBecause(ctx, p.reason);
  }

  /** IOMMU_GET_HW_INFO of a bound device; a skip where it cannot be asked, a failure where asking failed. */
  async hwInfo(ctx: Mocha.Context, cdev: string): Promise<HwInfo> {
    return answered(ctx, await readHwInfo(cdev), `IOMMU_GET_HW_INFO for ${cdev}`);
  }

  /** The oracle's host capabilities for a device, from its own hw info. */
  async hostCaps(ctx: Mocha.Context, cdev: string): Promise<HostCaps> {
    return hostCapsOf(await this.hwInfo(ctx, cdev));
  }

  /**
   * The kernel's own answer to IOMMU_HWPT_ALLOC with `flags` for this device,
   * asked directly (no QEMU): it is what QEMU must get back for the same
   * request. A skip where the helper cannot be run, a failure where it failed.
   */
  async kernelAnswer(ctx: Mocha.Context, cdev: string, flags: number): Promise<{ ok: boolean; errno?: string }> {
    return (await this.directAnswers(ctx, cdev, [flags]))[0]!;
  }

  /** The same for several flags values, in one helper run (a device's cdev binds one iommufd at a time). */
  async directAnswers(ctx: Mocha.Context, cdev: string, flags: number[]): Promise<Array<{ ok: boolean; errno?: string }>> {
    const what = `IOMMU_HWPT_ALLOC ${flags.map((f) => `0x${f.toString(16)}`).join(',')} for ${cdev}`;
    const r = answered(ctx, await probeHwptAlloc(cdev, flags), what);
    // A refusal is one of the errnos iommufd and the IOMMU drivers answer an allocation with;
    // anything else (ENOTTY: no such ioctl, EFAULT: a bad struct) means the question went wrong.
    const odd = r.results.filter((x) => !x.ok && !KERNEL_REFUSALS.has(x.errno ?? ''));
    if (odd.length) throw new Error(`${what}: not a refusal but a failed request: ${odd.map((x) => `0x${x.flags.toString(16)} ${x.errno ?? 'without errno'}`).join(', ')}`);
    return r.results.map((res) => (res.ok ? { ok: true } : { ok: false, ...(res.errno ? { errno: res.errno } : {}) }));
  }

  /** The profile's devices the lab suites may pass through (binding-test ones are the binding tests' own). */
  get passThrough(): ProfileDevice[] {
    return this.profile.devices.filter((d) => d.role !== 'binding-test');
  }

  /** The first profile device with `role`, or a skip naming the missing role. */
  async device(ctx: Mocha.Context, role: DeviceRole): Promise<LabDevice> {
    return (await this.devices(ctx, devicesWithRole(this.profile, role), 1, `no device with role ${role} in host profile ${this.profile.name}`))[0]!;
  }

  /** `count` of the `among` devices, or a skip: `none` where the profile has fewer, the holder where another run has them. */
  async devices(ctx: Mocha.Context, among: readonly ProfileDevice[], count: number, none: string): Promise<LabDevice[]> {
    if (among.length < count) return skipBecause(ctx, none);
    const got = among.filter((x) => this.bound.has(x.bdf)).slice(0, count);
    const elsewhere = among.map((x) => this.leasedElsewhere.get(x.bdf)).find(Boolean);
    if (got.length < count && elsewhere) return skipBecause(ctx, elsewhere);
    if (got.length < count) return skipBecause(ctx, none);
    return got.map((d) => ({ ...d, cdev: this.bound.get(d.bdf)!.cdev }));
  }

  close(): void {
    this.kprobes?.stop();
    this.binder.restoreAll();
    this.leases.releaseAll();
  }
}

/** The errnos with which iommufd and the IOMMU drivers refuse an HWPT allocation (not a malformed request). */
const KERNEL_REFUSALS = new Set(['EOPNOTSUPP', 'EINVAL', 'ENOENT', 'EBUSY', 'ENODEV', 'ENOMEM', 'ENOSPC']);

/** The oracle's view of a device's hw info: dirty tracking, PASID width, and (SMMUv3) whether the SMMU has substreams. */
export function hostCapsOf(info: HwInfo): HostCaps {
  return {
    dirtyTracking: (info.outCapabilities & 0x1) !== 0,
    maxPasidLog2: info.outMaxPasidLog2,
    ...(info.smmuv3 ? { smmuSsid: decodeSmmuIdr(info.smmuv3.idr).ssidSize > 0 } : {}),
  };
}

/** A helper's answer; a skip when its prerequisites are missing, a failure when it ran and failed. */
function answered<T>(ctx: Mocha.Context, r: Probed<T>, what: string): T {
  if (r.ok) return r.value;
  if (r.unavailable) return skipBecause(ctx, `cannot ask ${what}: ${r.reason}`);
  throw new Error(`${what} failed: ${r.reason}`);
}

export type { HostCaps };

/** A profile device this test (or suite) holds, bound to vfio-pci. */
export type LabDevice = ProfileDevice & { cdev: string };
