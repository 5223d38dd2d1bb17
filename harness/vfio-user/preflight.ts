/**
 * Checks on a machine configuration before it is launched with a vfio-user
 * device, so that a misconfiguration fails with a sentence instead of a QEMU
 * abort halfway through a guest boot.
 */

type PropValue = string | number | boolean;

/**
 * The parts of a machine description these checks read. Structurally a subset
 * of harness/qemu/argv.ts's MachineDescription, so one can be passed as is.
 */
export interface MachineConfigLike {
  machine?: { type: string; props?: Record<string, PropValue> };
  globals?: Array<{ driver: string; property: string; value: PropValue }>;
  devices?: Array<{ driver: string } & Record<string, unknown>>;
  extraArgs?: string[];
}

export class VfioUserConfigError extends Error {
  override name = 'VfioUserConfigError';
}

/**
 * With intel-iommu, QEMU maps a vfio-user device's DMA through IOMMU
 * notifiers, which intel-iommu only supports with caching-mode=on. Without it
 * QEMU starts fine and dies only when the guest enables DMA remapping
 * (seen with 11.1.3: `device 01.00.0 requires caching mode: Operation not
 * supported`, then `qemu: hardware error: vfio: DMA mapping failed, unable to
 * continue` and SIGABRT). Returns the error to raise, or undefined when the
 * configuration is fine (no vfio-user device, no intel-iommu, caching-mode on,
 * or the root bus bypasses the IOMMU).
 */
export function checkVfioUserNeedsCachingMode(config: MachineConfigLike): VfioUserConfigError | undefined {
  const devices = allDevices(config);
  const vfioUser = devices.filter((d) => d.driver === 'vfio-user-pci');
  const iommu = devices.find((d) => d.driver === 'intel-iommu');
  if (vfioUser.length === 0 || !iommu) return undefined;
  if (isOn(config.machine?.props?.['default-bus-bypass-iommu'])) return undefined;
  // The last -global wins, as in QEMU.
  const global = [...(config.globals ?? []), ...globalArgs(config.extraArgs ?? [])]
    .filter((g) => g.driver === 'intel-iommu' && g.property === 'caching-mode')
    .at(-1);
  const own = iommu.props['caching-mode'];
  // In JSON syntax QEMU takes only a JSON boolean ("on" is a type error there).
  const ok = own !== undefined ? (iommu.json ? own === true : isOn(own)) : isOn(global?.value);
  if (ok) return undefined;
  const value = own ?? global?.value;
  const names = vfioUser.map((d) => (typeof d.props.id === 'string' ? d.props.id : `on bus ${String(d.props.bus ?? '?')}`)).join(', ');
  const seen =
    value === undefined
      ? 'caching-mode is not set (default off)'
      : iommu.json && typeof own === 'string'
        ? `caching-mode is the string ${JSON.stringify(own)} (JSON device syntax needs true)`
        : `caching-mode=${String(value)}`;
  return new VfioUserConfigError(
    `vfio-user-pci ${names} behind intel-iommu needs caching-mode=on, but ${seen}: ` +
      'QEMU would abort once the guest enables DMA remapping ("device BB.DD.F requires caching mode", ' +
      '"vfio: DMA mapping failed, unable to continue"). Add caching-mode=on to the intel-iommu device.',
  );
}

interface Dev {
  driver: string;
  props: Record<string, unknown>;
  /** Given in JSON syntax (the Machine passes `devices` so), where types are strict. */
  json: boolean;
}

/** Devices from `devices` and from `-device` in extraArgs (JSON or key=value syntax). */
function allDevices(config: MachineConfigLike): Dev[] {
  const out: Dev[] = (config.devices ?? []).map((d) => ({ driver: d.driver, props: d, json: true }));
  const extra = config.extraArgs ?? [];
  for (let i = 0; i < extra.length - 1; i++) {
    if (extra[i] !== '-device') continue;
    const dev = parseDeviceArg(extra[i + 1]!);
    if (dev) out.push(dev);
  }
  return out;
}

function parseDeviceArg(arg: string): Dev | undefined {
  if (arg.trimStart().startsWith('{')) {
    try {
      const o = JSON.parse(arg) as Record<string, unknown>;
      return typeof o.driver === 'string' ? { driver: o.driver, props: o, json: true } : undefined;
    } catch {
      return undefined;
    }
  }
  const parts = splitKeyValues(arg);
  const [head, ...rest] = parts;
  if (!head) return undefined;
  const props: Record<string, unknown> = {};
  let driver = head;
  if (head.startsWith('driver=')) driver = head.slice('driver='.length);
  for (const p of rest) {
    const eq = p.indexOf('=');
    if (eq < 0) props[p] = 'on';
    else props[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return { driver, props, json: false };
}

function globalArgs(extra: string[]): Array<{ driver: string; property: string; value: PropValue }> {
  const out: Array<{ driver: string; property: string; value: PropValue }> = [];
  for (let i = 0; i < extra.length - 1; i++) {
    if (extra[i] !== '-global') continue;
    const m = /^([^.=]+)\.([^=]+)=(.*)$/.exec(extra[i + 1]!);
    if (m) out.push({ driver: m[1]!, property: m[2]!, value: m[3]! });
  }
  return out;
}

/** QEMU's option syntax: a doubled comma is a literal comma. */
function splitKeyValues(s: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === ',') {
      if (s[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
    } else cur += s[i];
  }
  parts.push(cur);
  return parts;
}

/** QEMU's bool parsing: on/yes/true (and JSON true). */
function isOn(v: unknown): boolean {
  if (v === true) return true;
  if (typeof v === 'string') return ['on', 'yes', 'true', 'y'].includes(v.toLowerCase());
  return false;
}
