import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { DeviceSpec, MachineDescription } from '../qemu/argv.js';
import type { Machine } from '../qemu/machine.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../qemu/topology.js';
import { TraceFormats, defaultTraceEventsPath } from '../trace/formats.js';
import { IommufdModel } from '../trace/model.js';
import type { ViommuConfig as OracleViommu } from '../trace/oracle.js';
import { parseTrace } from '../trace/parse.js';
import type { KernelRecord } from '../trace/model.js';
import { describeMachine, type ViommuConfig } from '../viommu/configs.js';
import { probeQemu, type QemuProbe } from '../viommu/probe.js';
import { findQemu, type Arch, type QemuBinary } from '../qemu/binary.js';

/**
 * The L2 machine of a lab scenario: the QEMU under test, given host devices
 * through vfio-pci on the iommufd backend, started paused (-S): QEMU
 * allocates and attaches HWPTs while it realizes the devices, before any guest
 * code runs. Its trace of iommufd calls is what the scenarios assert on.
 */
export const IOMMUFD_OBJECT_ID = 'iommufd0';

/** Trace events the scenarios read; globs, expanded by QEMU. */
export const L2_TRACE_EVENTS = ['iommufd_*', 'vtd_device_*', 'vfio_pci_synthesize_pasid_cap', 'smmuv3_accel_*'];

/** The environment variable naming the QEMU the lab suites run as L2 (`harness run --l2-qemu-x86_64`). */
export const l2QemuVar = (arch: Arch): string => `HARNESS_L2_QEMU_${arch.toUpperCase()}`;

/**
 * The QEMU under test as L2: $HARNESS_L2_QEMU_<ARCH> when set, else the
 * harness's own QEMU for that arch (a user's $QEMU_<ARCH>, else the
 * reference). A separate setting because in the virtual lab L1's QEMU must
 * stay one that can serve the synthetic endpoints (vfio-user-pci, 11.1 names)
 * while L2 may be any QEMU a user brings, e.g. an older release.
 */
export function l2Binary(arch: Arch, env: NodeJS.ProcessEnv = process.env): QemuBinary {
  const path = env[l2QemuVar(arch)];
  return path ? findQemu(arch, { path, origin: `$${l2QemuVar(arch)}` }) : findQemu(arch, { env });
}

/** What the L2 QEMU offers (its vIOMMU property names, trace formats, features). */
export function probeL2(arch: Arch): Promise<QemuProbe> {
  return probeQemu(l2Binary(arch));
}

export interface HostDeviceSpec {
  /** Host (L1 or lab machine) PCI address. */
  bdf: string;
  /** qdev id in L2. */
  id: string;
  /** Root port to plug into (default: the device's own, in order). */
  bus?: string;
  /** Extra vfio-pci properties. */
  props?: Record<string, unknown>;
}

export function vfioPciDevice(d: HostDeviceSpec, bus: string): DeviceSpec {
  return { driver: 'vfio-pci', id: d.id, bus, host: d.bdf, iommufd: IOMMUFD_OBJECT_ID, ...d.props };
}

export interface L2Spec {
  config: ViommuConfig;
  /** Cold-plugged host devices (each on its own root port). */
  devices?: HostDeviceSpec[];
  /** Free root ports left for hot-plug (rpN after the cold-plugged ones). */
  spareRootPorts?: number;
  memoryMB?: number;
  extraDevices?: DeviceSpec[];
}

/**
 * An aarch64 L2's UEFI firmware: $HARNESS_L2_AARCH64_FIRMWARE, else Debian's
 * qemu-efi-aarch64 (the arm64 root has it). arm-smmuv3 accel=on refuses a
 * device-tree boot ("SMMUv3 with accel=on not supported for DT"): QEMU
 * builds ACPI tables only for a firmware boot.
 */
export const L2_AARCH64_FIRMWARE_VAR = 'HARNESS_L2_AARCH64_FIRMWARE';
export function l2Firmware(env: NodeJS.ProcessEnv = process.env): string {
  const path = env[L2_AARCH64_FIRMWARE_VAR] ?? '/usr/share/qemu-efi-aarch64/QEMU_EFI.fd';
  if (!existsSync(path)) throw new Error(`aarch64 L2 firmware ${path} does not exist (set $${L2_AARCH64_FIRMWARE_VAR}, or install qemu-efi-aarch64)`);
  return path;
}

export function l2Description(spec: L2Spec, probe: QemuProbe): MachineDescription {
  const devices = spec.devices ?? [];
  const ports = rootPorts(devices.length + (spec.spareRootPorts ?? 1));
  return describeMachine(spec.config, probe, {
    paused: true,
    // L2 stays paused: 64 MB is plenty, and every page is an IOMMU mapping
    // (a vfio-user DMA_MAP per page in the virtual lab).
    memoryMB: spec.memoryMB ?? 64,
    globals: spec.config.arch === 'x86_64' ? [NATIVE_PCIE_HOTPLUG] : [],
    objects: [{ 'qom-type': 'iommufd', id: IOMMUFD_OBJECT_ID }],
    devices: [...ports, ...devices.map((d, i) => vfioPciDevice(d, d.bus ?? `rp${i}`)), ...(spec.extraDevices ?? [])],
    trace: L2_TRACE_EVENTS,
    timestamps: true,
    ...(spec.config.arch === 'aarch64' ? { extraArgs: ['-bios', l2Firmware()] } : {}),
  });
}

/** The first root port left free for hot-plug in an L2 made from `spec`. */
export function spareRootPort(spec: L2Spec, n = 0): string {
  return `rp${(spec.devices?.length ?? 0) + n}`;
}

/** The oracle's view of a named config. */
export function oracleViommu(config: ViommuConfig): OracleViommu {
  const v = config.viommu;
  if (!v) return { kind: 'none' };
  const f = v.features;
  if (v.driver === 'intel-iommu') return { kind: 'intel-iommu', fsts: f.fsts === true, pasidBits: Number(f.pasidBits ?? 0) };
  const ssid = f.ssidsize;
  return { kind: 'arm-smmuv3', accel: f.accel === true, ssidsize: ssid === undefined || ssid === 'auto' ? 'auto' : Number(ssid) };
}

const formatsCache = new Map<string, Promise<TraceFormats>>();

/** The trace formats of the QEMU that wrote the trace (its own trace-events-all). */
export function formatsFor(traceEventsAll: string | undefined): Promise<TraceFormats> {
  const path = traceEventsAll ?? defaultTraceEventsPath();
  let p = formatsCache.get(path);
  if (!p) {
    p = TraceFormats.load(path);
    formatsCache.set(path, p);
  }
  return p;
}

/** QEMU's trace so far, as a model of iommufd objects, with the kernel's answers joined in. */
export async function iommufdModel(machine: Machine, kernel: KernelRecord[] = []): Promise<IommufdModel> {
  if (!machine.traceFile) throw new Error(`machine ${machine.name} was launched without tracing`);
  return iommufdModelOf(machine.traceFile, await formatsFor(machine.binary.traceEventsAll), kernel);
}

/** The same from a trace file (e.g. of a launch that failed: artifactsDir/trace.log). */
export async function iommufdModelOf(traceFile: string, formats: TraceFormats, kernel: KernelRecord[] = []): Promise<IommufdModel> {
  return iommufdModelOfText(await readFile(traceFile, 'utf8'), formats, kernel);
}

/** The same from trace lines (e.g. one soak cycle's). */
export function iommufdModelOfText(text: string, formats: TraceFormats, kernel: KernelRecord[] = []): IommufdModel {
  const model = IommufdModel.fromParse(parseTrace(text, formats));
  for (const k of kernel) model.addKernel(k);
  if (kernel.length) model.joinKernel();
  return model;
}

/** Open file descriptors of a process (to catch leaks across hot-plug cycles). */
export async function fdCount(pid: number): Promise<number> {
  const { readdir } = await import('node:fs/promises');
  return (await readdir(`/proc/${pid}/fd`)).length;
}
