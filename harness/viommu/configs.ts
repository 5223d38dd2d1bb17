import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DeviceSpec, MachineDescription, PropValue, Props } from '../qemu/argv.js';
import type { Arch } from '../qemu/binary.js';
import { repoRoot } from '../util/paths.js';
import { FEATURES_BY_DRIVER } from './features.js';
import type { QemuProbe } from './probe.js';

export type ViommuDriver = 'intel-iommu' | 'arm-smmuv3';

/** A named vIOMMU configuration (qemu-configs/viommu/NAME.json), in feature terms. */
export interface ViommuConfig {
  name: string;
  description: string;
  arch: Arch;
  machine: { type: string; props?: Props };
  /** Absent for "no vIOMMU". */
  viommu?: { driver: ViommuDriver; id?: string; features: Record<string, PropValue> };
  /** Prerequisites beyond QEMU itself, e.g. "kvm". */
  requires?: string[];
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** The QEMU at hand lacks what a config needs: a test skips on it, naming the binary, its version and what is missing. */
export class QemuLacksError extends Error {
  override name = 'QemuLacksError';
}

/** No -device of this vIOMMU in this binary (10.0 makes its arm-smmuv3 only with -machine virt,iommu=smmuv3). */
export class ViommuDeviceMissingError extends QemuLacksError {
  override name = 'ViommuDeviceMissingError';
}

/** A feature the QEMU at hand does not offer under any known name. */
export class ViommuFeatureError extends QemuLacksError {
  override name = 'ViommuFeatureError';
  constructor(
    readonly qemuPath: string,
    readonly qemuVersion: string,
    readonly driver: string,
    readonly feature: string,
    readonly tried: string[],
    /** Why the names it does have do not count (e.g. a bool where a width is needed). */
    readonly why?: string,
  ) {
    super(`QEMU ${qemuPath} (${qemuVersion}) has no ${driver} property for ${feature} (tried ${tried.join(', ')}${why ? `; ${why}` : ''})`);
  }
}

export const CONFIG_DIR = join(repoRoot, 'qemu-configs', 'viommu');

export function listConfigs(dir = CONFIG_DIR): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -5))
    .sort();
}

/** Loads and validates a named config; errors name the file and the field. */
export function loadConfig(name: string, dir = CONFIG_DIR): ViommuConfig {
  const file = join(dir, `${name}.json`);
  if (!existsSync(file)) throw new ConfigError(`unknown vIOMMU config ${JSON.stringify(name)} (known: ${listConfigs(dir).join(', ')})`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ConfigError(`${file}: not JSON: ${(e as Error).message}`);
  }
  return validateConfig(name, raw, file);
}

export function validateConfig(name: string, raw: unknown, where = name): ViommuConfig {
  const bad = (field: string, why: string): never => {
    throw new ConfigError(`${where}: field ${field} ${why}`);
  };
  if (typeof raw !== 'object' || raw === null) bad('(top level)', 'must be an object');
  const c = raw as Record<string, unknown>;
  if (typeof c.description !== 'string') bad('description', 'must be a string');
  if (c.arch !== 'x86_64' && c.arch !== 'aarch64') bad('arch', `must be "x86_64" or "aarch64", not ${JSON.stringify(c.arch)}`);
  const machine = c.machine as Record<string, unknown> | undefined;
  if (typeof machine?.type !== 'string') bad('machine.type', 'must be a string');
  if (c.viommu !== undefined) {
    const v = c.viommu as Record<string, unknown>;
    const driver = v.driver as string;
    const specs = FEATURES_BY_DRIVER[driver];
    if (!specs) bad('viommu.driver', `must be one of ${Object.keys(FEATURES_BY_DRIVER).join(', ')}, not ${JSON.stringify(driver)}`);
    if (typeof v.features !== 'object' || v.features === null) bad('viommu.features', 'must be an object');
    for (const [f, val] of Object.entries(v.features as object)) {
      if (!specs![f]) bad(`viommu.features.${f}`, `is not a ${driver} feature (known: ${Object.keys(specs!).join(', ')})`);
      if (!['string', 'number', 'boolean'].includes(typeof val)) bad(`viommu.features.${f}`, 'must be a string, number or boolean');
      const values = specs![f]!.values;
      if (values && !values.accepts(val as PropValue)) bad(`viommu.features.${f}`, `must be ${values.says}, not ${JSON.stringify(val)}`);
    }
  }
  if (c.requires !== undefined && !(Array.isArray(c.requires) && c.requires.every((r) => typeof r === 'string'))) {
    bad('requires', 'must be a list of strings');
  }
  return { ...(c as unknown as ViommuConfig), name };
}

export interface ResolveOptions {
  /**
   * Every value must reach QEMU as given: a spelling that converts it with
   * loss (10.0's x-pasid-mode bool for a PASID width) counts as absent. For
   * tests about the value itself, e.g. that a width above 20 is refused.
   */
  exact?: boolean;
}

/**
 * The config as this QEMU spells it: each feature becomes the first property
 * name the binary offers. Nothing is guessed: a feature the binary lacks is a
 * ViommuFeatureError naming the binary, its version and the names tried.
 */
export function resolveConfig(config: ViommuConfig, probe: QemuProbe, opts: ResolveOptions = {}): { device?: DeviceSpec; notes: string[] } {
  if (!config.viommu) return { notes: [] };
  const { driver, features } = config.viommu;
  const props = probe.drivers[driver];
  const where = `QEMU ${probe.binary.path} (${probe.version.text})`;
  if (!props) throw new ViommuDeviceMissingError(`${where} has no ${driver} that -device takes`);
  const have = new Set(props.map((p) => p.name));
  const device: DeviceSpec = { driver, id: config.viommu.id ?? 'viommu0' };
  const notes: string[] = [];
  for (const [feature, value] of Object.entries(features)) {
    const spec = FEATURES_BY_DRIVER[driver]![feature]!;
    const offered = spec.spellings.filter((s) => have.has(s.property));
    const spelling = offered.find((s) => !(opts.exact && s.lossy));
    if (!spelling) {
      const lossy = offered.map((s) => `${s.note ?? `${s.property} converts with loss`}, so ${JSON.stringify(value)} cannot reach QEMU as given`);
      throw new ViommuFeatureError(probe.binary.path, probe.version.text, driver, spec.description, spec.spellings.map((s) => s.property), lossy.join('; ') || undefined);
    }
    const type = props.find((p) => p.name === spelling.property)!.type;
    device[spelling.property] = coerceToPropertyType(spelling.convert ? spelling.convert(value) : value, type);
    if (spelling.note) notes.push(spelling.note);
  }
  return { device, notes };
}

/** A machine description for the config: the machine, plus its vIOMMU device first. */
export function describeMachine(config: ViommuConfig, probe: QemuProbe, extra: Partial<MachineDescription> = {}): MachineDescription {
  const { device } = resolveConfig(config, probe);
  return {
    arch: config.arch,
    machine: { type: config.machine.type, props: { ...config.machine.props, ...extra.machine?.props } },
    ...extra,
    devices: [...(device ? [device] : []), ...(extra.devices ?? [])],
  };
}

/**
 * Configs say `ats: true` or `ssidsize: 20`; QEMU's JSON -device wants each
 * value in its property's own type, and those types change between releases
 * (ats went from bool to OnOffAuto, ssidsize and oas became enums with
 * "auto"). The probed type decides.
 */
export function coerceToPropertyType(value: PropValue, type: string): PropValue {
  if (type === 'bool') {
    if (value === 'on' || value === 'true') return true;
    if (value === 'off' || value === 'false') return false;
    return value;
  }
  if (/^u?int\d+$/.test(type) && typeof value === 'string' && /^\d+$/.test(value)) return Number(value);
  if (/^u?int\d+$/.test(type) || type.startsWith('link<')) return value;
  // OnOffAuto, enums (OasMode, SsidSizeMode), str: strings.
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  return String(value);
}
