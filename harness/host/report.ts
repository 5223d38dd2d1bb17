/**
 * The host probe behind `harness doctor`: KVM, IOMMU instances (VT-d
 * cap/ecap decoded), iommufd and VFIO cdev support, and per profile device
 * its driver, IOMMU group, PCI extended capabilities and what iommufd
 * reports for it. hostPrerequisites() turns a report into one boolean and
 * one exact reason per scenario prerequisite; the scenario suites skip with
 * those reasons.
 *
 * The report is plain JSON (64-bit registers as hex strings), so a report
 * taken in the virtual lab can be read back and judged on the outside.
 */
import { release } from 'node:os';
import { join } from 'node:path';
import { summarizeVtd } from '../guest/vtd-regs.js';
import type { Arch } from '../qemu/binary.js';
import { hostQemuArch, kvmUnavailableReason } from './kvm.js';
import { decodeSmmuIdr, probeHwptAlloc, probeToolBuilt, probeToolPath, readHwInfo } from './hwinfo.js';
import { extCapsUnreadableReason, summarizeExtCaps, type ExtCapsSummary } from '../pci/config.js';
import { platformArch, resolveAccel, type DeviceRole, type HostProfile } from './profile.js';
import { hostPaths, iommufdVfioState, listIommus, readPciConfig, readPciDevice, type HostPaths, type IommufdVfioState, type IommuKind } from './sysfs.js';
import { VfioBinder, type BinderOptions } from './vfio-bind.js';
import { DeviceLeases, leaseAndBind } from './lease.js';
import { openKernelAnswers } from './kernel-answers.js';

export interface VtdReport {
  cap: string;
  ecap: string;
  scalableMode: boolean;
  nested: boolean;
  firstStage: boolean;
  secondStage: boolean;
  /** SLADS: second-stage accessed/dirty bits, what IOMMU dirty tracking needs. */
  secondStageAccessedDirty: boolean;
  pasid: boolean;
  pasidBits: number;
  cachingMode: boolean;
  deviceTlb: boolean;
  pageRequest: boolean;
  capFlags: string[];
  ecapFlags: string[];
}

export interface IommuReport {
  name: string;
  kind: IommuKind;
  devices: number;
  vtd?: VtdReport;
  /** SMMUv3 features are not in sysfs; IOMMU_GET_HW_INFO of a bound device gives them. */
  note?: string;
  problems: string[];
}

export interface HwInfoReport {
  ok: boolean;
  reason?: string;
  devId?: number;
  outDataType?: string;
  outCapabilities?: number;
  capabilities?: string[];
  outMaxPasidLog2?: number;
  vtd?: VtdReport;
  smmuv3?: { idr: string[]; s1p: boolean; s2p: boolean; ssidSize: number; ats: boolean; pri: boolean };
}

export interface DeviceReport {
  bdf: string;
  role: DeviceRole;
  name?: string;
  exists: boolean;
  vendor?: string;
  device?: string;
  classCode?: string;
  driver: string | null;
  driverOverride?: string;
  iommuGroup: number | null;
  /** The other members of its IOMMU group. */
  groupPeers: string[];
  iommu?: string;
  cdev: string | null;
  /** Below a conventional PCI bridge (requester-ID aliasing); null when config space could not tell. */
  behindConventionalBridge: boolean | null;
  extCaps?: ExtCapsSummary;
  /** Why the extended capabilities could not be read, when they could not. */
  extCapsReason?: string;
  hwInfo?: HwInfoReport;
  hwptAlloc?: { ok: boolean; reason?: string; results?: { flags: string; ok: boolean; errno?: string }[] };
  problems: string[];
}

export interface HostReport {
  schema: 1;
  generatedAt: string;
  host: { arch: string; kernel: string; root: boolean };
  paths: HostPaths;
  kvm: { arch: Arch; ok: boolean; reason?: string };
  iommu: { instances: IommuReport[] };
  iommufd: { ok: boolean; path: string };
  vfio: IommufdVfioState;
  probeTool: { path: string; built: boolean };
  profile?: { name: string; source: string; platform: string; accel: string; resolvedAccel?: 'kvm' | 'tcg'; accelProblem?: string };
  devices: DeviceReport[];
  /**
   * Whether the kernel's answers to QEMU (tracefs kprobes) can be shown on
   * this host, after a self-check on a bound device; `broken`: the probes
   * were set but read something else (a harness bug on this kernel).
   */
  kernelAnswers: { ok: boolean; broken?: boolean; reason: string };
}

export interface ProbeHostOptions {
  paths?: Partial<HostPaths>;
  profile?: HostProfile;
  /** Bind the profile's devices to vfio-pci for the hw info, and give them back. */
  bind?: boolean;
  binder?: Omit<BinderOptions, 'paths'>;
  /**
   * With bind: the leases a lab run takes too (default: the machine's, leaseDir()), so doctor never
   * binds a device a run holds, nor a run one doctor holds; a device leased elsewhere is waited for
   * up to `leaseWaitMs` (default $HARNESS_LEASE_WAIT_MS), then left unbound, naming the holder's PID.
   */
  leases?: DeviceLeases;
  leaseWaitMs?: number;
  /** IOMMU_HWPT_ALLOC flags to try on each bound device. */
  hwptFlags?: number[];
  probeTool?: string;
  /** KVM's answer; default: kvmUnavailableReason for the profile's platform (or this host's arch). */
  kvmReason?: string | null;
}

const hex = (n: number | bigint, w = 0): string => `0x${n.toString(16).padStart(w, '0')}`;

export function vtdReport(cap: bigint, ecap: bigint): VtdReport {
  const s = summarizeVtd(cap, ecap);
  return {
    cap: hex(cap),
    ecap: hex(ecap),
    scalableMode: s.scalableMode,
    nested: s.nested,
    firstStage: s.firstStage,
    secondStage: s.secondStage,
    secondStageAccessedDirty: s.secondStageAccessedDirty,
    pasid: s.pasid,
    pasidBits: s.pasidBits,
    cachingMode: s.cachingMode,
    deviceTlb: s.deviceTlb,
    pageRequest: s.pageRequest,
    capFlags: s.cap.flags,
    ecapFlags: s.ecap.flags,
  };
}

function behindConventionalBridge(p: HostPaths, bdf: string): boolean | null {
  let cur = readPciDevice(p, bdf)?.parent;
  let unknown = false;
  while (cur) {
    const parent = readPciDevice(p, cur);
    if (!parent) break;
    if (parent.isBridge) {
      const cfg = readPciConfig(p, cur);
      if (!cfg || cfg.length < 256) unknown = true;
      else {
        const caps = summarizeExtCaps(cfg);
        // A bridge without a PCIe capability is conventional; a PCIe-to-PCI bridge puts a conventional bus below it.
        if (!caps.pcie || caps.pcieType === 'pcie-to-pci-bridge') return true;
      }
    }
    cur = parent.parent;
  }
  return unknown ? null : false;
}

function deviceReport(p: HostPaths, d: HostProfile['devices'][number]): DeviceReport {
  const dev = readPciDevice(p, d.bdf);
  const base = { bdf: d.bdf, role: d.role, ...(d.name !== undefined && { name: d.name }) };
  if (!dev)
    return { ...base, exists: false, driver: null, iommuGroup: null, groupPeers: [], cdev: null, behindConventionalBridge: null, problems: [`no such PCI device (${join(p.sys, 'bus/pci/devices', d.bdf)} does not exist)`] };
  const report: DeviceReport = {
    ...base,
    exists: true,
    vendor: hex(dev.vendor, 4),
    device: hex(dev.device, 4),
    classCode: hex(dev.classCode, 6),
    driver: dev.driver ?? null,
    ...(dev.driverOverride && { driverOverride: dev.driverOverride }),
    iommuGroup: dev.iommuGroup ?? null,
    groupPeers: dev.groupMembers.filter((m) => m !== d.bdf),
    ...(dev.iommu && { iommu: dev.iommu }),
    cdev: dev.cdev ?? null,
    behindConventionalBridge: behindConventionalBridge(p, d.bdf),
    problems: [],
  };
  const cfg = readPciConfig(p, d.bdf);
  if (!cfg || cfg.length < 64) report.extCapsReason = `config space of ${d.bdf} is not readable`;
  else {
    try {
      report.extCaps = summarizeExtCaps(cfg);
      const why = extCapsUnreadableReason(report.extCaps);
      if (why) report.extCapsReason = why;
    } catch (e) {
      report.extCapsReason = (e as Error).message;
    }
  }
  if (dev.iommuGroup === undefined) report.problems.push('no IOMMU group');
  return report;
}

async function addHwInfo(report: DeviceReport, cdev: string, opts: ProbeHostOptions): Promise<void> {
  const probeOpts = { ...(opts.probeTool && { tool: opts.probeTool }), devIommu: join(hostPaths(opts.paths).dev, 'iommu') };
  const hw = await readHwInfo(cdev, probeOpts);
  if (!hw.ok) report.hwInfo = { ok: false, reason: hw.reason };
  else {
    const v = hw.value;
    report.hwInfo = {
      ok: true,
      devId: v.devId,
      outDataType: v.outDataTypeName,
      outCapabilities: v.outCapabilities,
      capabilities: v.capabilityNames,
      outMaxPasidLog2: v.outMaxPasidLog2,
      ...(v.vtd && { vtd: vtdReport(v.vtd.capReg, v.vtd.ecapReg) }),
      ...(v.smmuv3 && { smmuv3: { idr: v.smmuv3.idr.map((r) => hex(r, 8)), ...pick(decodeSmmuIdr(v.smmuv3.idr)) } }),
    };
  }
  if (opts.hwptFlags?.length) {
    const r = await probeHwptAlloc(cdev, opts.hwptFlags, probeOpts);
    report.hwptAlloc = r.ok
      ? { ok: true, results: r.value.results.map((x) => ({ flags: hex(x.flags), ok: x.ok, ...(x.errno && { errno: x.errno }) })) }
      : { ok: false, reason: r.reason };
  }
}

const pick = (d: ReturnType<typeof decodeSmmuIdr>): { s1p: boolean; s2p: boolean; ssidSize: number; ats: boolean; pri: boolean } => ({
  s1p: d.s1p,
  s2p: d.s2p,
  ssidSize: d.ssidSize,
  ats: d.ats,
  pri: d.pri,
});

/** Probes the host (reads only, unless opts.bind). */
export async function probeHost(opts: ProbeHostOptions = {}): Promise<HostReport> {
  const p = hostPaths(opts.paths);
  const arch: Arch = opts.profile ? platformArch(opts.profile.platform) : (hostQemuArch() ?? 'x86_64');
  const kvmReason = opts.kvmReason === undefined ? kvmUnavailableReason(arch) : (opts.kvmReason ?? undefined);
  const vfio = iommufdVfioState(p);
  const tool = opts.probeTool ?? probeToolPath();
  const instances: IommuReport[] = listIommus(p).map((i) => ({
    name: i.name,
    kind: i.kind,
    devices: i.devices.length,
    ...(i.vtd && { vtd: vtdReport(i.vtd.cap, i.vtd.ecap) }),
    ...(i.kind === 'smmuv3' && { note: 'SMMUv3 features are not in sysfs; IOMMU_GET_HW_INFO on a vfio-bound device reports IDR0-5 (harness doctor --bind)' }),
    problems: i.problems,
  }));
  const report: HostReport = {
    schema: 1,
    generatedAt: new Date().toISOString(),
    host: { arch: hostQemuArch() ?? process.arch, kernel: release(), root: process.getuid?.() === 0 },
    paths: p,
    kvm: { arch, ok: !kvmReason, ...(kvmReason && { reason: kvmReason }) },
    iommu: { instances },
    iommufd: { ok: vfio.devIommu, path: join(p.dev, 'iommu') },
    vfio,
    probeTool: { path: tool, built: probeToolBuilt(tool) },
    devices: [],
    kernelAnswers: { ok: false, reason: 'kernel answers unverified: no host profile, so no device to run the kprobe self-check with (harness doctor --profile P --bind)' },
  };
  const profile = opts.profile;
  if (profile) {
    report.profile = { name: profile.name, source: profile.source, platform: profile.platform, accel: profile.accel };
    try {
      report.profile.resolvedAccel = resolveAccel(profile, kvmReason);
    } catch (e) {
      report.profile.accelProblem = (e as Error).message;
    }
    report.devices = profile.devices.map((d) => deviceReport(p, d));
    let binder: VfioBinder | undefined;
    let removeHandlers: (() => void) | undefined;
    // After the binder's handlers (installed first), so its exit handler gives the devices back before the leases go.
    const leases = opts.bind ? (opts.leases ?? new DeviceLeases()) : undefined;
    const leasedElsewhere = new Map<string, string>();
    try {
      if (opts.bind) {
        binder = new VfioBinder(profile, { ...opts.binder, paths: p });
        removeHandlers = binder.installSignalHandlers();
        const present = report.devices.filter((d) => d.exists).map((d) => d.bdf);
        try {
          const { bound, elsewhere } = await leaseAndBind(binder, leases!, present, opts.leaseWaitMs);
          for (const b of bound) report.devices.find((d) => d.bdf === b.bdf)!.cdev = b.cdev;
          for (const [bdf, reason] of elsewhere) {
            leasedElsewhere.set(bdf, reason);
            report.devices.find((d) => d.bdf === bdf)!.problems.push(`not bound: ${reason}`);
            opts.binder?.log?.(`not binding ${bdf}: ${reason}`);
          }
        } catch (e) {
          for (const r of report.devices) r.problems.push(`binding for hw info: ${(e as Error).message}`);
        }
      }
      for (const r of report.devices) {
        if (!r.exists) continue;
        const elsewhere = leasedElsewhere.get(r.bdf);
        if (elsewhere) r.hwInfo = { ok: false, reason: `not bound for the probe: ${elsewhere}` };
        else if (r.cdev) await addHwInfo(r, r.cdev, opts);
        else
          r.hwInfo = {
            ok: false,
            reason: `${r.bdf} is not bound to vfio-pci (driver ${r.driver ?? 'none'}); harness doctor --bind binds it for the probe and gives it back`,
          };
      }
      const k = await openKernelAnswers(report.devices.find((d) => d.cdev)?.cdev ?? undefined);
      if (k.ok) k.session.stop();
      report.kernelAnswers = k.ok ? { ok: true, reason: k.detail } : { ok: false, ...(k.broken && { broken: true }), reason: k.reason };
    } finally {
      if (binder) {
        for (const res of binder.restoreAll()) if (!res.ok) report.devices.find((d) => d.bdf === res.bdf)?.problems.push(`giving back: ${res.detail}`);
      }
      leases?.releaseAll();
      removeHandlers?.();
    }
  }
  return report;
}

// --- prerequisites ---------------------------------------------------------

export interface Prerequisite {
  ok: boolean;
  /** Why not (the exact skip reason), or what satisfied it. */
  reason: string;
}

export type PrerequisiteName = 'kvm' | 'iommu' | 'iommufd' | 'vfioCdev' | 'nesting' | 'dirtyTracking' | 'pasidDevice' | 'noPasidDevice' | 'bridgeDevice' | 'kernelAnswers';
export type HostPrerequisites = Record<PrerequisiteName, Prerequisite>;

const yes = (reason: string): Prerequisite => ({ ok: true, reason });
const no = (reason: string): Prerequisite => ({ ok: false, reason });

/** The VT-d registers that govern a device: its hw info when the probe ran, else its IOMMU's sysfs registers. */
function vtdFor(report: HostReport, iommus: IommuReport[]): { who: string; vtd: VtdReport; via: string }[] {
  const fromHw = report.devices.filter((d) => d.hwInfo?.vtd).map((d) => ({ who: d.iommu ?? d.bdf, vtd: d.hwInfo!.vtd!, via: `IOMMU_GET_HW_INFO for ${d.bdf}` }));
  if (fromHw.length) return fromHw;
  return iommus.filter((i) => i.vtd).map((i) => ({ who: i.name, vtd: i.vtd!, via: 'sysfs' }));
}

/** The IOMMU instances that matter: those translating for present profile devices, else all of them. */
function relevantIommus(report: HostReport): IommuReport[] {
  const used = new Set(report.devices.map((d) => d.iommu).filter(Boolean));
  const subset = report.iommu.instances.filter((i) => used.has(i.name));
  return subset.length ? subset : report.iommu.instances;
}

function iommuPrereq(report: HostReport): Prerequisite {
  const inst = report.iommu.instances;
  if (!inst.length) return no(`no IOMMU in ${join(report.paths.sys, 'class/iommu')} (IOMMU absent or off: intel_iommu=on, iommu.passthrough=0)`);
  const kinds = [...new Set(inst.map((i) => i.kind))];
  const want = report.profile?.platform;
  if (want && !kinds.includes(want as IommuKind)) return no(`profile ${report.profile!.name} is for ${want}, but this host's IOMMUs are ${kinds.join(', ')}`);
  return yes(`IOMMU ${inst.map((i) => `${i.name} (${i.kind})`).join(', ')}`);
}

function nestingPrereq(report: HostReport, iommu: Prerequisite): Prerequisite {
  if (!iommu.ok) return no(iommu.reason);
  const iommus = relevantIommus(report);
  const kinds = new Set(iommus.map((i) => i.kind));
  if (kinds.has('vtd')) {
    for (const { who, vtd, via } of vtdFor(report, iommus)) {
      if (!vtd.nested) return no(`host IOMMU ${who} has no nesting (ecap.NEST=0${via === 'sysfs' ? '' : `, ${via}`})`);
      if (!vtd.secondStage) return no(`host IOMMU ${who} has no second-stage translation for a nesting parent (ecap.SLTS=0)`);
    }
    return yes(`host IOMMU ${iommus.map((i) => i.name).join(', ')} has nesting (ecap.NEST=1)`);
  }
  if (kinds.has('smmuv3')) {
    const hw = report.devices.find((d) => d.hwInfo?.smmuv3);
    if (!hw) return no('SMMUv3 nesting is not readable from sysfs: no profile device is bound to vfio-pci for IOMMU_GET_HW_INFO (harness doctor --bind)');
    const s = hw.hwInfo!.smmuv3!;
    if (!s.s1p || !s.s2p) return no(`host SMMUv3 behind ${hw.bdf} has no nesting (IDR0.S1P=${+s.s1p} S2P=${+s.s2p})`);
    return yes(`host SMMUv3 behind ${hw.bdf} has stage 1 and stage 2 (IDR0.S1P=1 S2P=1)`);
  }
  return no(`host IOMMU ${iommus.map((i) => `${i.name} (${i.kind})`).join(', ')} is neither VT-d nor SMMUv3`);
}

function dirtyPrereq(report: HostReport, iommu: Prerequisite): Prerequisite {
  if (!iommu.ok) return no(iommu.reason);
  const hw = report.devices.find((d) => d.hwInfo?.ok);
  if (hw) {
    return hw.hwInfo!.capabilities!.includes('DIRTY_TRACKING')
      ? yes(`IOMMU_GET_HW_INFO for ${hw.bdf} reports IOMMU_HW_CAP_DIRTY_TRACKING`)
      : no(`IOMMU_GET_HW_INFO for ${hw.bdf} reports no IOMMU_HW_CAP_DIRTY_TRACKING`);
  }
  const iommus = relevantIommus(report);
  const vtds = vtdFor(report, iommus);
  if (vtds.length) {
    const lacking = vtds.find((v) => !v.vtd.secondStageAccessedDirty);
    return lacking ? no(`host IOMMU ${lacking.who} has no dirty tracking (ecap.SLADS=0)`) : yes(`host IOMMU ${vtds.map((v) => v.who).join(', ')} has dirty tracking (ecap.SLADS=1)`);
  }
  return no('IOMMU dirty tracking is not readable from sysfs here: no profile device is bound to vfio-pci for IOMMU_GET_HW_INFO (harness doctor --bind)');
}

function roleDevices(report: HostReport, role: DeviceRole): Prerequisite | DeviceReport[] {
  if (!report.profile) return no(`no host profile (harness doctor --profile, or HARNESS_HOST_PROFILE) lists a device with role ${role}`);
  const ds = report.devices.filter((d) => d.role === role);
  if (!ds.length) return no(`profile ${report.profile.name} lists no device with role ${role}`);
  const present = ds.filter((d) => d.exists);
  if (!present.length) return no(`no device with role ${role} exists here (${ds.map((d) => `${d.bdf} does not exist`).join('; ')})`);
  return present;
}

function pasidPrereq(report: HostReport, iommu: Prerequisite): Prerequisite {
  const ds = roleDevices(report, 'pasid');
  if (!Array.isArray(ds)) return ds;
  let why = '';
  for (const d of ds) {
    if (d.extCapsReason && !d.extCaps?.pasid) {
      why ||= `cannot tell whether ${d.bdf} (role pasid) has PASID: ${d.extCapsReason}`;
      continue;
    }
    if (!d.extCaps?.pasid) {
      why ||= `device ${d.bdf} (role pasid) has no PASID capability in its config space`;
      continue;
    }
    if (!iommu.ok) return no(iommu.reason);
    const vtd = report.iommu.instances.find((i) => i.name === d.iommu)?.vtd ?? (d.iommu ? undefined : report.iommu.instances.find((i) => i.vtd)?.vtd);
    if (vtd && !vtd.pasid) {
      why ||= `host IOMMU ${d.iommu ?? 'VT-d'} has no PASID support (ecap.PASID=0)`;
      continue;
    }
    if (d.hwInfo?.ok && d.hwInfo.outMaxPasidLog2 === 0) {
      why ||= `IOMMU_GET_HW_INFO reports out_max_pasid_log2=0 for ${d.bdf}`;
      continue;
    }
    return yes(`device ${d.bdf} has a PASID capability (${d.extCaps.pasid.maxPasidWidth} bits)${d.hwInfo?.ok ? `, out_max_pasid_log2=${d.hwInfo.outMaxPasidLog2}` : ''}`);
  }
  return no(why);
}

/**
 * One boolean and one exact reason per scenario prerequisite. When not ok,
 * the reason is the skip reason; when ok, it says what satisfied it.
 */
export function hostPrerequisites(report: HostReport): HostPrerequisites {
  const iommu = iommuPrereq(report);
  const v = report.vfio;
  const noPasid = roleDevices(report, 'no-pasid');
  const bridge = roleDevices(report, 'behind-bridge');
  return {
    kvm: report.kvm.ok ? yes(`/dev/kvm is usable for ${report.kvm.arch}`) : no(report.kvm.reason ?? 'KVM unavailable'),
    iommu,
    iommufd: report.iommufd.ok ? yes(`${report.iommufd.path} exists`) : no(`no ${report.iommufd.path} (kernel without CONFIG_IOMMUFD, or the iommufd module is not loaded)`),
    vfioCdev: !v.vfioPciDriver
      ? no(`the vfio-pci driver is not loaded (no ${join(report.paths.sys, 'bus/pci/drivers/vfio-pci')})`)
      : !(v.devVfioDevices || v.classVfioDev)
        ? no(`no ${join(report.paths.sys, 'class/vfio-dev')} and no ${join(report.paths.dev, 'vfio/devices')} (kernel without CONFIG_VFIO_DEVICE_CDEV)`)
        : yes('vfio-pci with device cdevs (/dev/vfio/devices)'),
    nesting: nestingPrereq(report, iommu),
    dirtyTracking: dirtyPrereq(report, iommu),
    pasidDevice: pasidPrereq(report, iommu),
    noPasidDevice: Array.isArray(noPasid) ? yes(`device ${noPasid[0]!.bdf} (role no-pasid)`) : noPasid,
    bridgeDevice: !Array.isArray(bridge)
      ? bridge
      : bridge.some((d) => d.behindConventionalBridge !== false)
        ? yes(`device ${bridge.find((d) => d.behindConventionalBridge !== false)!.bdf} (role behind-bridge)`)
        : no(`no device with role behind-bridge is below a conventional PCI bridge (${bridge.map((d) => d.bdf).join(', ')})`),
    kernelAnswers: report.kernelAnswers ? { ok: report.kernelAnswers.ok, reason: report.kernelAnswers.reason } : no('kernel answers: not probed (a report from an older harness)'),
  };
}
