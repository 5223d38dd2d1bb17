import { existsSync } from 'node:fs';
import { devicesWithRole, loadProfile, profileFromEnv, type DeviceRole, type HostProfile, type ProfileDevice } from '../host/profile.js';
import { DeviceLoans } from '../host/device-loans.js';
import { DeviceLeases } from '../host/lease.js';
import { VfioBinder } from '../host/vfio-bind.js';
import { decodeSmmuIdr, probeHwptAlloc, readHwInfo, type HwInfo, type Probed } from '../host/hwinfo.js';
import { openKernelAnswers, type KernelAnswers } from '../host/kernel-answers.js';
import { hostPrerequisites, probeHost, type HostPrerequisites, type PrerequisiteName } from '../host/report.js';
import { skipBecause } from '../report/skip.js';
import type { KprobeSession } from '../trace/kprobes.js';
import type { HostCaps } from '../trace/oracle.js';

/**
 * The host a lab suite runs on (a lab machine, or the virtual lab's L1): its
 * profile, the kernel-side kprobes, what the host can do, and its devices,
 * each leased and bound to vfio-pci when a test (or a suite's before hook)
 * first asks for it and given back when that test (or suite) ends: the lab
 * fixture says which scope a request belongs to and ends it. Opened in a
 * suite's before(); anything missing is a skip of the whole suite with the
 * exact reason.
 */
export class LabHost {
  private constructor(
    readonly profile: HostProfile,
    readonly binder: VfioBinder,
    /** The devices lent to tests and suites, with this run's leases (another run on the machine never takes these). */
    readonly loans: DeviceLoans,
    private readonly leases: DeviceLeases,
    /** The kernel's answers (kprobes, self-checked), or why there are none. */
    readonly kernelAnswers: KernelAnswers,
    /** What this host can do, each with the exact reason (harness doctor's view). */
    readonly prerequisites: HostPrerequisites,
    /** Which scope (a test, or a suite from its before hook) a request for devices belongs to. */
    private readonly scopeOf: (ctx: Mocha.Context) => object,
  ) {}

  /** Why no lab suite can run on this host, or undefined. */
  static unavailableReason(env: NodeJS.ProcessEnv = process.env): string | undefined {
    if (!existsSync('/dev/iommu')) return 'no /dev/iommu: this host exposes no IOMMU through iommufd (the virtual-lab suite runs the lab suites in L1)';
    if (!profileFromEnv(env)) return 'no host profile: set HARNESS_HOST_PROFILE (or `harness run --profile`) to a file in qemu-configs/hosts/';
    if (process.getuid?.() !== 0) return 'lab suites bind devices to vfio-pci and need root';
    return undefined;
  }

  static async open(ctx: Mocha.Context, scopeOf: (ctx: Mocha.Context) => object): Promise<LabHost> {
    const why = LabHost.unavailableReason();
    if (why) return skipBecause(ctx, why);
    const profile = loadProfile(profileFromEnv()!);
    // The journal must survive a hard kill of this process; in the virtual lab
    // the cache is on the read-only root, so L1 points it at its own tmpfs.
    const journal = process.env.HARNESS_VFIO_JOURNAL;
    const binder = new VfioBinder(profile, journal ? { journal } : {});
    binder.replayJournal();
    binder.installSignalHandlers();
    // Leases go after the binder's exit handler, which gives the devices back first.
    const leases = new DeviceLeases();
    const kernelAnswers = await selfCheckedKernelAnswers(new DeviceLoans(binder, leases), passThrough(profile));
    const prerequisites = hostPrerequisites(await probeHost({ profile }));
    return LabHost.of({ profile, binder, leases, kernelAnswers, prerequisites, scopeOf });
  }

  /** A lab host from its parts, as open() finds them on this host (tests give a fake host's). */
  static of(p: {
    profile: HostProfile;
    binder: VfioBinder;
    leases: DeviceLeases;
    kernelAnswers: KernelAnswers;
    prerequisites: HostPrerequisites;
    scopeOf: (ctx: Mocha.Context) => object;
    leaseWaitMs?: number;
  }): LabHost {
    const loans = new DeviceLoans(p.binder, p.leases, p.leaseWaitMs);
    return new LabHost(p.profile, p.binder, loans, p.leases, p.kernelAnswers, p.prerequisites, p.scopeOf);
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
    return passThrough(this.profile);
  }

  /** The first profile device with `role` this run can have, or a skip naming the missing role or the device's holder. */
  async device(ctx: Mocha.Context, role: DeviceRole): Promise<LabDevice> {
    // A missing PASID device is a hardware case on some platforms (no emulated endpoint behind QEMU's SMMUv3 has PASID): say so.
    const what = role === 'pasid' ? 'no PASID-capable endpoint (role pasid)' : `no device with role ${role}`;
    return (await this.devices(ctx, devicesWithRole(this.profile, role), 1, `${what} in host profile ${this.profile.name}`))[0]!;
  }

  /**
   * `count` of the `among` devices, leased and bound for the asking test (or
   * suite, from its before hook) until it ends; a skip: `none` where the
   * profile has fewer, "device X is leased by run PID N" where another run
   * kept them past the lease deadline.
   */
  async devices(ctx: Mocha.Context, among: readonly ProfileDevice[], count: number, none: string): Promise<LabDevice[]> {
    if (among.length < count) return skipBecause(ctx, none);
    const r = await this.loans.take(
      among.map((d) => d.bdf),
      count,
      this.scopeOf(ctx),
    );
    if (!r.ok) return skipBecause(ctx, r.reason);
    return r.bound.map((b) => ({ ...among.find((d) => d.bdf === b.bdf)!, cdev: b.cdev }));
  }

  /** Gives back what a test or suite was lent; a device that would not go back is an error naming it. */
  giveBack(scope: object): void {
    const failed = this.loans.giveBack(scope).filter((r) => !r.ok);
    if (failed.length) throw new Error(`devices not given back: ${failed.map((r) => `${r.bdf}: ${r.detail}`).join('; ')}`);
  }

  close(): void {
    this.kprobes?.stop();
    this.loans.giveBackAll();
    this.binder.restoreAll();
    this.leases.releaseAll();
  }
}

const passThrough = (profile: HostProfile): ProfileDevice[] => profile.devices.filter((d) => d.role !== 'binding-test');

/**
 * The kprobes, self-checked through a device lent for the check alone (the
 * first one free within the lease deadline) and given back straight after.
 */
async function selfCheckedKernelAnswers(loans: DeviceLoans, devices: readonly ProfileDevice[]): Promise<KernelAnswers> {
  const scope = {};
  const r = devices.length
    ? await loans.take(
        devices.map((d) => d.bdf),
        1,
        scope,
      )
    : { ok: false as const, reason: 'the host profile lists no device to pass through' };
  let answers: KernelAnswers;
  try {
    answers = await openKernelAnswers(r.ok ? r.bound[0]!.cdev : undefined);
  } catch (e) {
    loans.giveBack(scope);
    throw e;
  }
  const failed = loans.giveBack(scope).filter((g) => !g.ok);
  if (failed.length) {
    if (answers.ok) answers.session.stop();
    throw new Error(`${failed.map((g) => `${g.bdf}: ${g.detail}`).join('; ')} (lent for the kprobe self-check) not given back`);
  }
  return r.ok || answers.ok ? answers : { ...answers, reason: `${answers.reason} (${r.reason})` };
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
