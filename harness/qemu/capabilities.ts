import { execa } from 'execa';
import type { QmpClient } from '../qmp/client.js';
import type { QemuBinary } from './binary.js';
import { scaled } from '../util/timeouts.js';

/**
 * What one QEMU binary offers beyond its vIOMMU properties, read from the
 * binary itself over QMP (never from its version number: distributions
 * configure features out, and a git build between releases has whatever its
 * tree has). Debian trixie's 10.0, for one, has no vfio-user-pci, no qtest
 * accelerator, no monitor-qmp object and no `-run-with exit-with-parent`.
 */
export interface QemuFeatures {
  /**
   * Devices `-device` takes (user-creatable, names and aliases, from
   * `-device help`). QOM knows more: 10.0's arm-smmuv3 answers
   * device-list-properties yet is refused by -device ("expects a pluggable
   * device type"); it comes only with `-machine virt,iommu=smmuv3`.
   */
  devices: ReadonlySet<string>;
  /** Accelerators by their `-accel` name (tcg, kvm, qtest, ...). */
  accels: ReadonlySet<string>;
  /** Types `-object` takes (user-creatable QOM types: monitor-qmp, iommufd, ...). */
  objects: ReadonlySet<string>;
  /** Command-line options' parameters as QEMU reports them (query-command-line-options). */
  options: ReadonlyMap<string, ReadonlySet<string>>;
  /** QMP commands. */
  commands: ReadonlySet<string>;
}

/** One thing a test needs from the binary. */
export type QemuNeed =
  | { device: string }
  | { accel: string }
  | { object: string }
  | { option: string; param: string }
  | { command: string };

interface TypeInfo {
  name: string;
}
interface CommandLineOptionInfo {
  option: string;
  parameters: Array<{ name: string }>;
}

/**
 * Asks a running QEMU (the probe's `-machine none` instance) what it offers,
 * and the binary itself which devices -device takes (QMP has no
 * user-creatable flag).
 */
export async function readFeatures(qmp: QmpClient, bin: QemuBinary): Promise<QemuFeatures> {
  const types = async (args: Record<string, unknown>): Promise<Set<string>> =>
    new Set((await qmp.execute<TypeInfo[]>('qom-list-types', args)).map((t) => t.name));
  const devices = parseDeviceHelp(await deviceHelp(bin));
  // Every accelerator is a QOM class "<name>-accel"; `-accel help` omits qtest
  // and query-accelerators is 10.2+, so the class list is what every version answers.
  const accels = new Set([...(await types({ implements: 'accel', abstract: false }))].filter((n) => n.endsWith('-accel')).map((n) => n.slice(0, -'-accel'.length)));
  const objects = await types({ implements: 'user-creatable', abstract: false });
  const opts = await qmp.execute<CommandLineOptionInfo[]>('query-command-line-options');
  const options = new Map(opts.map((o) => [o.option, new Set(o.parameters.map((p) => p.name))]));
  const commands = new Set((await qmp.execute<TypeInfo[]>('query-commands')).map((c) => c.name));
  return { devices, accels, objects, options, commands };
}

/** `-device help` of the binary; an error naming it when it does not answer. */
async function deviceHelp(bin: QemuBinary): Promise<string> {
  const r = await execa(bin.command, [...bin.prefixArgs, ...bin.baseArgs, '-machine', 'none', '-device', 'help'], { env: bin.env, reject: false, timeout: scaled(10_000), stdin: 'ignore' });
  if (r.exitCode !== 0 || !/^name "/m.test(r.stdout)) {
    throw new Error(`${bin.path} -device help: ${r.timedOut ? 'timed out after 10 s' : `exit ${r.exitCode ?? r.signal}`}, printed ${JSON.stringify((r.stdout + r.stderr).slice(0, 300))}`);
  }
  return r.stdout;
}

/** Device names and aliases from `-device help` lines: `name "virtio-iommu-pci", bus PCI, alias "virtio-iommu"`. */
export function parseDeviceHelp(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^name "([^"]+)"(?:.*, alias "([^"]+)")?/.exec(line);
    if (!m) continue;
    names.add(m[1]!);
    if (m[2]) names.add(m[2]);
  }
  return names;
}

/** How a need reads in a skip reason. */
export function describeNeed(n: QemuNeed): string {
  if ('device' in n) return `device ${n.device}`;
  if ('accel' in n) return `accelerator ${n.accel}`;
  if ('object' in n) return `-object type ${n.object}`;
  if ('option' in n) return `-${n.option} ${n.param}`;
  return `QMP command ${n.command}`;
}

/** The needs this binary does not meet, each as describeNeed() words it. */
export function lacking(f: QemuFeatures, needs: readonly QemuNeed[]): string[] {
  return needs.filter((n) => !meets(f, n)).map(describeNeed);
}

function meets(f: QemuFeatures, n: QemuNeed): boolean {
  if ('device' in n) return f.devices.has(n.device);
  if ('accel' in n) return f.accels.has(n.accel);
  if ('object' in n) return f.objects.has(n.object);
  if ('option' in n) return f.options.get(n.option)?.has(n.param) ?? false;
  return f.commands.has(n.command);
}

/**
 * A monitor on chardev `chardev`, as this binary takes it: `-object
 * monitor-qmp|monitor-hmp` where it has those types (11.1 deprecates -mon
 * for them, facts §10), else `-mon` (10.0 has no monitor objects). The
 * monitor behaves the same either way.
 */
export function monitorArgs(f: QemuFeatures, id: string, mode: 'qmp' | 'hmp', chardev: string): string[] {
  return f.objects.has(`monitor-${mode}`)
    ? ['-object', `monitor-${mode},id=${id},chardev=${chardev}`]
    : ['-mon', `id=${id},chardev=${chardev},mode=${mode === 'qmp' ? 'control' : 'readline'}`];
}
