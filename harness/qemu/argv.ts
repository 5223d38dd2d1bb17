import type { Arch } from './binary.js';

export type PropValue = string | number | boolean;
export type Props = Record<string, PropValue>;

/** A -device, as QEMU's JSON syntax takes it: no comma escaping, types kept. */
export type DeviceSpec = { driver: string; id?: string; bus?: string } & Record<string, unknown>;
/** A -object, likewise. */
export type ObjectSpec = { 'qom-type': string; id: string } & Record<string, unknown>;

/** What a test wants from a machine. The Machine adds QMP, chardevs and tracing. */
export interface MachineDescription {
  arch: Arch;
  /** -machine TYPE,props (q35, virt, none). */
  machine: { type: string; props?: Props };
  accel?: 'tcg' | 'kvm';
  cpu?: string;
  smp?: number;
  memoryMB?: number;
  /** -S: stop before the first instruction. */
  paused?: boolean;
  /** -nodefaults (default true): only what the description asks for. */
  nodefaults?: boolean;
  globals?: Array<{ driver: string; property: string; value: PropValue }>;
  objects?: ObjectSpec[];
  devices?: DeviceSpec[];
  kernel?: { path: string; initrd?: string; append?: string };
  /** Capture the first serial port (chardev "serial0") as an artifact and a stream. */
  serial?: boolean;
  /** Further socket chardevs the harness listens on (e.g. a virtio-console port). */
  chardevs?: string[];
  /** Trace event patterns (e.g. "iommufd_*") written to the machine's trace file. */
  trace?: string[];
  /** Prefix every trace and error line with an ISO-8601 UTC time (-msg timestamp=on). */
  timestamps?: boolean;
  /** Anything else, appended verbatim. */
  extraArgs?: string[];
}

/** What the Machine provides at launch time. */
export interface RuntimeEndpoints {
  qmpSocket: string;
  chardevSockets: Record<string, string>;
  traceFile?: string;
  traceEventsFile?: string;
  /**
   * `-run-with exit-with-parent=on` (QEMU 9.1+). Machine never sets it: every
   * QEMU it starts runs under a parent-death SIGKILL instead (parent-death.ts),
   * which also ends a stopped QEMU; only the bench's raw-QEMU peers use it.
   */
  exitWithParent?: boolean;
}

/** Escapes a value for QEMU's key=value option syntax (a comma is doubled). */
export function optValue(v: PropValue): string {
  const s = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
  return s.replaceAll(',', ',,');
}

export function keyValues(head: string | undefined, props: Props = {}): string {
  const parts = Object.entries(props).map(([k, v]) => `${k}=${optValue(v)}`);
  return (head !== undefined ? [optValue(head), ...parts] : parts).join(',');
}

/** The description plus the runtime endpoints, as QEMU's argv (without the binary). */
export function buildArgv(d: MachineDescription, rt: RuntimeEndpoints): string[] {
  const a: string[] = [];
  const add = (...xs: string[]) => a.push(...xs);
  add('-machine', keyValues(d.machine.type, d.machine.props));
  add('-accel', d.accel ?? 'tcg');
  if (d.cpu) add('-cpu', d.cpu);
  if (d.smp) add('-smp', String(d.smp));
  if (d.memoryMB) add('-m', `${d.memoryMB}M`);
  if (d.nodefaults ?? true) add('-nodefaults');
  add('-display', 'none');
  if (d.paused) add('-S');
  if (rt.exitWithParent) add('-run-with', 'exit-with-parent=on');
  // QEMU connects to sockets the harness already listens on: no polling for a
  // socket file to appear, and the peer is known to be this QEMU.
  // QEMU connects to sockets the harness already listens on (client mode, no
  // server=on): nothing to poll for, and the peer is known to be this QEMU.
  add('-qmp', `unix:${optValue(rt.qmpSocket)}`);
  for (const [id, path] of Object.entries(rt.chardevSockets)) add('-chardev', `socket,id=${id},path=${optValue(path)}`);
  if (d.serial) add('-serial', 'chardev:serial0');
  if (rt.traceFile) {
    const events = rt.traceEventsFile ? `events=${optValue(rt.traceEventsFile)},` : '';
    add('-trace', `${events}file=${optValue(rt.traceFile)}`);
  }
  if (d.timestamps) add('-msg', 'timestamp=on');
  for (const g of d.globals ?? []) add('-global', `${g.driver}.${g.property}=${optValue(g.value)}`);
  for (const o of d.objects ?? []) add('-object', JSON.stringify(o));
  if (d.kernel) {
    add('-kernel', d.kernel.path);
    if (d.kernel.initrd) add('-initrd', d.kernel.initrd);
    if (d.kernel.append) add('-append', d.kernel.append);
  }
  for (const dev of d.devices ?? []) add('-device', JSON.stringify(dev));
  add(...(d.extraArgs ?? []));
  return a;
}
