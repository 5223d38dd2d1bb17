/**
 * Host profiles (qemu-configs/hosts/*.yaml): which machine this is (VT-d or
 * SMMUv3), which QEMU and accelerator to use, and the PCI devices the harness
 * may take from the host, each with the role the scenarios expect of it.
 * Nothing outside `devices` is ever bound to vfio-pci (harness/host/vfio-bind.ts).
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type { Arch } from '../qemu/binary.js';
import { repoRoot } from '../util/paths.js';
import { excerpt, SourceLines, sizeProblem } from '../util/source-lines.js';

export type Platform = 'vtd' | 'smmuv3';
export type Accel = 'kvm' | 'tcg' | 'auto';
/**
 * pasid: the device has a PCIe PASID capability; behind-bridge: below a
 * conventional PCI bridge; binding-test: a device the harness may take only
 * to test its own binding (bound, killed, given back, or refused because it
 * is in use); lab suites never bind it or pass it through.
 */
export type DeviceRole = 'pasid' | 'no-pasid' | 'behind-bridge' | 'binding-test';

export const PLATFORMS: readonly Platform[] = ['vtd', 'smmuv3'];
export const ACCELS: readonly Accel[] = ['kvm', 'tcg', 'auto'];
export const DEVICE_ROLES: readonly DeviceRole[] = ['pasid', 'no-pasid', 'behind-bridge', 'binding-test'];

export interface ProfileDevice {
  /** Normalized: 0000:01:00.0, lower case. */
  bdf: string;
  role: DeviceRole;
  name?: string;
  notes?: string;
}

export interface HostProfile {
  name: string;
  platform: Platform;
  /** QEMU binaries per architecture, absolute (relative ones resolve against the profile's folder). */
  qemu: Partial<Record<Arch, string>>;
  accel: Accel;
  devices: ProfileDevice[];
  /** Devices that may share an IOMMU group with a listed device without being listed themselves. */
  allowGroupPeers: string[];
  /** Where the profile came from (a path, or a label for text). */
  source: string;
}

export const hostProfilesDir = join(repoRoot, 'qemu-configs', 'hosts');

/**
 * Largest profile read: a profile lists a lab's handful of devices (the
 * shipped ones are under 2 KB; 256 KiB is about 5,000). Past this it is
 * refused before parsing: a 50 MB profile with 1.34 M devices took Node to
 * 4.3 GB and out of memory, and the YAML parser needs about 3 s per MB here.
 */
export const MAX_PROFILE_BYTES = 256 << 10;

export class ProfileError extends Error {
  override name = 'ProfileError';
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    // The message lists the first 20; `problems` keeps them all.
    const shown = problems.length > 20 ? [...problems.slice(0, 20), `... and ${problems.length - 20} more`] : problems;
    super(`${source}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  ${shown.join('\n  ')}`}`);
  }
}

const BDF_RE = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;

/** 0000:01:00.0 for "01:00.0", "0000:01:00.0" or "0000:01:00.0" in upper case; undefined when it is not a PCI address. */
export function normalizeBdf(text: string): string | undefined {
  const m = BDF_RE.exec(text.trim());
  if (!m) return undefined;
  const [, domain = '0000', bus, dev, fn] = m;
  if (parseInt(dev!, 16) > 0x1f) return undefined;
  return `${domain}:${bus}:${dev}.${fn}`.toLowerCase();
}

/** Like normalizeBdf, but throws an error naming `field` and the bad value. */
export function parseBdf(value: unknown, field: string): string {
  const bdf = typeof value === 'string' ? normalizeBdf(value) : undefined;
  if (!bdf) throw new Error(bdfProblem(value, field));
  return bdf;
}

function bdfProblem(value: unknown, field: string): string {
  const m = typeof value === 'string' ? BDF_RE.exec(value.trim()) : null;
  if (m && parseInt(m[3]!, 16) > 0x1f) return `${field}: ${JSON.stringify(value)} has device number 0x${m[3]} (a PCI device number is 00-1f)`;
  return `${field}: ${JSON.stringify(value)} is not a PCI address (DDDD:BB:DD.F)`;
}

const TOP_KEYS = ['name', 'platform', 'qemu', 'accel', 'devices', 'allowGroupPeers'] as const;
const DEVICE_KEYS = ['bdf', 'role', 'name', 'notes'] as const;
const QEMU_ARCHES: readonly Arch[] = ['x86_64', 'aarch64'];

const isMap = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
/** A value for an error message, cut short: a garbage file must not be echoed whole. */
const show = (v: unknown): string => excerpt(JSON.stringify(v) ?? String(v));

function oneOf<T extends string>(v: unknown, allowed: readonly T[], field: string, problems: string[]): T | undefined {
  if (typeof v === 'string' && (allowed as readonly string[]).includes(v)) return v as T;
  problems.push(`${field}: ${show(v)} is not one of ${allowed.join(', ')}`);
  return undefined;
}

function optionalText(v: unknown, field: string, problems: string[]): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  problems.push(`${field}: ${show(v)} is not text`);
  return undefined;
}

function unknownKeys(obj: Record<string, unknown>, known: readonly string[], at: string, problems: string[]): void {
  for (const k of Object.keys(obj))
    if (!known.includes(k)) problems.push(`${at}${k}: not a profile field (expected one of ${known.join(', ')})`);
}

function expandPath(p: string, baseDir: string): string {
  const home = p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
  return isAbsolute(home) ? home : resolve(baseDir, home);
}

/**
 * Checks a parsed document against the schema; every problem names its field
 * path and the value found, and all of them are reported at once.
 */
export function validateProfile(doc: unknown, source = '<profile>', baseDir = process.cwd()): HostProfile {
  const problems: string[] = [];
  if (!isMap(doc)) throw new ProfileError(source, [`the profile must be a mapping with ${TOP_KEYS.join(', ')}; got ${show(doc)}`]);
  unknownKeys(doc, TOP_KEYS, '', problems);

  let name = '';
  if (typeof doc.name === 'string' && doc.name.trim()) name = doc.name.trim();
  else problems.push(`name: ${show(doc.name)} is not a non-empty name`);

  const platform = oneOf(doc.platform, PLATFORMS, 'platform', problems);
  const accel = doc.accel === undefined ? 'auto' : oneOf(doc.accel, ACCELS, 'accel', problems);

  const qemu: Partial<Record<Arch, string>> = {};
  if (doc.qemu !== undefined && doc.qemu !== null) {
    if (!isMap(doc.qemu)) problems.push(`qemu: ${show(doc.qemu)} is not a mapping of architecture to path (x86_64, aarch64)`);
    else
      for (const [arch, path] of Object.entries(doc.qemu)) {
        if (!(QEMU_ARCHES as readonly string[]).includes(arch)) problems.push(`qemu.${arch}: not an architecture (expected ${QEMU_ARCHES.join(', ')})`);
        else if (path === null || path === undefined) continue;
        else if (typeof path !== 'string' || !path.trim()) problems.push(`qemu.${arch}: ${show(path)} is not a path`);
        else qemu[arch as Arch] = expandPath(path.trim(), baseDir);
      }
  }

  const devices: ProfileDevice[] = [];
  const seen = new Map<string, number>();
  if (!Array.isArray(doc.devices)) problems.push(`devices: ${show(doc.devices)} is not a list (use [] for none)`);
  else
    doc.devices.forEach((d: unknown, i) => {
      const at = `devices[${i}]`;
      if (!isMap(d)) {
        problems.push(`${at}: ${show(d)} is not a mapping with bdf and role`);
        return;
      }
      unknownKeys(d, DEVICE_KEYS, `${at}.`, problems);
      let bdf: string | undefined;
      try {
        bdf = parseBdf(d.bdf, `${at}.bdf`);
      } catch (e) {
        problems.push((e as Error).message);
      }
      const role = oneOf(d.role, DEVICE_ROLES, `${at}.role`, problems);
      const dname = optionalText(d.name, `${at}.name`, problems);
      const notes = optionalText(d.notes, `${at}.notes`, problems);
      if (bdf !== undefined) {
        const first = seen.get(bdf);
        if (first !== undefined) problems.push(`${at}.bdf: ${bdf} is already devices[${first}]`);
        else seen.set(bdf, i);
      }
      if (bdf && role) devices.push({ bdf, role, ...(dname !== undefined && { name: dname }), ...(notes !== undefined && { notes }) });
    });

  const allowGroupPeers: string[] = [];
  if (doc.allowGroupPeers !== undefined && doc.allowGroupPeers !== null) {
    if (!Array.isArray(doc.allowGroupPeers)) problems.push(`allowGroupPeers: ${show(doc.allowGroupPeers)} is not a list of PCI addresses`);
    else
      doc.allowGroupPeers.forEach((v: unknown, i) => {
        try {
          const bdf = parseBdf(v, `allowGroupPeers[${i}]`);
          if (seen.has(bdf)) problems.push(`allowGroupPeers[${i}]: ${bdf} is listed in devices already`);
          else allowGroupPeers.push(bdf);
        } catch (e) {
          problems.push((e as Error).message);
        }
      });
  }

  if (problems.length) throw new ProfileError(source, problems);
  return { name, platform: platform!, qemu, accel: accel!, devices, allowGroupPeers, source };
}

/**
 * Parses YAML text; every problem names its line: syntax errors their line
 * and column, schema problems the line of the field they name.
 */
export function parseProfile(text: string, source = '<profile>', baseDir = process.cwd()): HostProfile {
  const tooBig = sizeProblem(Buffer.byteLength(text), MAX_PROFILE_BYTES, 'the profile');
  if (tooBig) throw new ProfileError(source, [tooBig]);
  const src = SourceLines.parse(text);
  const doc = src.doc;
  if (doc.errors.length) {
    throw new ProfileError(
      source,
      // prettyErrors appends " at line L, column C:" and a code frame; we lead with the position instead.
      doc.errors.map((e) => `${e.linePos ? `line ${e.linePos[0].line}, column ${e.linePos[0].col}: ` : ''}${excerpt(e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, ''), 200)}`),
    );
  }
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (e) {
    // The yaml library refuses aliases that expand past 100 nodes (a "billion laughs").
    const line = src.firstAliasLine();
    throw new ProfileError(source, [`${line ? `line ${line}: ` : ''}${(e as Error).message} (YAML aliases expand to too many nodes; a profile needs no aliases)`]);
  }
  try {
    return validateProfile(value, source, baseDir);
  } catch (e) {
    if (!(e instanceof ProfileError)) throw e;
    throw new ProfileError(
      source,
      e.problems.map((p) => {
        const line = /^([\w.[\]-]+): /.exec(p)?.[1];
        const at = line === undefined ? undefined : src.lineOf(line);
        return at ? `line ${at}: ${p}` : p;
      }),
    );
  }
}

/**
 * Loads a profile by path, or by name from qemu-configs/hosts ("virtual-lab"
 * for qemu-configs/hosts/virtual-lab.yaml).
 */
export function loadProfile(pathOrName: string): HostProfile {
  const path = resolveProfilePath(pathOrName);
  let text: string;
  try {
    const tooBig = sizeProblem(statSync(path).size, MAX_PROFILE_BYTES, 'the profile');
    if (tooBig) throw new ProfileError(path, [tooBig]);
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if (e instanceof ProfileError) throw e;
    throw new ProfileError(path, [`cannot read the profile: ${(e as Error).message}`]);
  }
  return parseProfile(text, path, dirname(path));
}

export function resolveProfilePath(pathOrName: string): string {
  if (/^[\w.-]+$/.test(pathOrName) && !pathOrName.endsWith('.yaml') && !pathOrName.endsWith('.yml'))
    return join(hostProfilesDir, `${pathOrName}.yaml`);
  return resolve(pathOrName);
}

/** The profile the environment names (HARNESS_HOST_PROFILE), if any. */
export function profileFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.HARNESS_HOST_PROFILE || undefined;
}

/** The QEMU architecture a platform's guests run. */
export function platformArch(p: Platform): Arch {
  return p === 'vtd' ? 'x86_64' : 'aarch64';
}

/**
 * The accelerator to launch with: `auto` is KVM where the host can run it
 * (kvmReason undefined), else TCG. An explicit `kvm` on a host without KVM is
 * an error naming why.
 */
export function resolveAccel(profile: Pick<HostProfile, 'accel' | 'source'>, kvmReason: string | undefined): 'kvm' | 'tcg' {
  if (profile.accel === 'tcg') return 'tcg';
  if (profile.accel === 'kvm') {
    if (kvmReason) throw new ProfileError(profile.source, [`accel: "kvm" but KVM is unavailable here: ${kvmReason}`]);
    return 'kvm';
  }
  return kvmReason ? 'tcg' : 'kvm';
}

export function profileDevice(profile: HostProfile, bdf: string): ProfileDevice | undefined {
  const n = normalizeBdf(bdf);
  return profile.devices.find((d) => d.bdf === n);
}

export function devicesWithRole(profile: HostProfile, role: DeviceRole): ProfileDevice[] {
  return profile.devices.filter((d) => d.role === role);
}
