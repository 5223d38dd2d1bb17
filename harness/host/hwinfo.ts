/**
 * What iommufd reports for a device bound to vfio-pci, through the native
 * helper images/tools/iommufd-probe (built by scripts/build-tools.sh into
 * cacheDir()/tools/<machine>/<source hash>/, see harness/util/native-tools.ts): IOMMU_GET_HW_INFO, and which
 * IOMMU_HWPT_ALLOC flags the kernel accepts for the device.
 *
 * Every call returns either the parsed answer or a reason that says what was
 * missing (the helper, /dev/iommu, the cdev) or what the kernel refused.
 */
import { accessSync, constants, existsSync } from 'node:fs';
import { execa } from 'execa';
import { nativeToolPath, nativeToolSource } from '../util/native-tools.js';
import { scaled } from '../util/timeouts.js';

export const PROBE_SOURCE = nativeToolSource('iommufd-probe');

/** IOMMU_HW_INFO_TYPE_* (Linux 7.2 uAPI). */
export const HW_INFO_TYPES: Readonly<Record<number, string>> = { 0: 'NONE', 1: 'INTEL_VTD', 2: 'ARM_SMMUV3', 3: 'TEGRA241_CMDQV', 4: 'AMD' };
/** IOMMU_HW_CAP_* bits. */
export const HW_CAPS: Readonly<Record<number, string>> = { 0x1: 'DIRTY_TRACKING', 0x2: 'PCI_PASID_EXEC', 0x4: 'PCI_PASID_PRIV', 0x8: 'PCI_ATS_NOT_SUPPORTED' };

export interface HwInfo {
  cdev: string;
  devId: number;
  outDataType: number;
  outDataTypeName: string;
  outCapabilities: number;
  capabilityNames: string[];
  outMaxPasidLog2: number;
  vtd?: { flags: number; capReg: bigint; ecapReg: bigint };
  smmuv3?: { flags: number; idr: number[]; iidr: number; aidr: number };
}

export interface HwptAllocResult {
  flags: number;
  ok: boolean;
  /** errno name when refused (EOPNOTSUPP, ENOENT, ...). */
  errno?: string;
  hwptId?: number;
}

export interface HwptAllocProbe {
  cdev: string;
  devId: number;
  ioasId: number;
  results: HwptAllocResult[];
}

/**
 * An answer, or why there is none. `unavailable` marks a missing prerequisite
 * (no helper, no /dev/iommu, no cdev): a test may skip for it. Without it the
 * helper ran and failed (timed out, an ioctl failed, bad JSON): a failure.
 */
export type Probed<T> = { ok: true; value: T } | { ok: false; reason: string; unavailable?: true };

export interface ProbeOptions {
  /** The helper binary; default: $HARNESS_IOMMUFD_PROBE, else the cached build of the current source. */
  tool?: string;
  /** Default /dev/iommu. */
  devIommu?: string;
  timeoutMs?: number;
}

/** Where scripts/build-tools.sh puts the helper built from the current source. */
export function probeToolPath(): string {
  return process.env.HARNESS_IOMMUFD_PROBE || nativeToolPath('iommufd-probe');
}

export function probeToolBuilt(tool = probeToolPath()): boolean {
  try {
    accessSync(tool, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Why the helper cannot run against `cdev` at all, or undefined when it can be tried. */
export function probeUnavailableReason(cdev: string, opts: ProbeOptions = {}): string | undefined {
  const tool = opts.tool ?? probeToolPath();
  const devIommu = opts.devIommu ?? '/dev/iommu';
  if (!probeToolBuilt(tool)) return `the iommufd-probe helper is not built (${tool}; run scripts/build-tools.sh)`;
  if (!existsSync(devIommu)) return `no ${devIommu} (kernel without CONFIG_IOMMUFD, or the iommufd module is not loaded)`;
  if (!existsSync(cdev)) return `no ${cdev} (the device is not bound to vfio-pci with cdev support)`;
  return undefined;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function field<T>(o: Record<string, unknown>, k: string, type: 'number' | 'string' | 'boolean', where: string): T {
  if (typeof o[k] !== type) throw new Error(`iommufd-probe output: ${where}${k} is ${JSON.stringify(o[k])}, not a ${type}`);
  return o[k] as T;
}

const hexBig = (s: string, what: string): bigint => {
  if (!/^0x[0-9a-f]+$/i.test(s)) throw new Error(`iommufd-probe output: ${what} ${JSON.stringify(s)} is not hex`);
  return BigInt(s);
};

export function capabilityNames(caps: number): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 32; bit++) {
    const m = 2 ** bit;
    if (caps & m) out.push(HW_CAPS[m] ?? `0x${m.toString(16)}`);
  }
  return out;
}

/** The helper's one JSON object; its failure object (error, step, errno) becomes the reason. */
function probeObject(text: string): Probed<Record<string, unknown>> {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return { ok: false, reason: `iommufd-probe printed no JSON: ${JSON.stringify(text.slice(0, 200))}` };
  }
  if (!isObj(o)) return { ok: false, reason: `iommufd-probe printed ${JSON.stringify(o)}, not an object` };
  if (typeof o.error === 'string')
    return { ok: false, reason: `iommufd-probe ${String(o.step ?? '?')} failed: ${o.error}${typeof o.errno === 'string' ? ` (${o.errno})` : ''}` };
  return { ok: true, value: o };
}

export function parseHwInfoJson(text: string): Probed<HwInfo> {
  const parsed = probeObject(text);
  if (!parsed.ok) return parsed;
  const o = parsed.value;
  try {
    const type = field<number>(o, 'out_data_type', 'number', '');
    const caps = field<number>(o, 'out_capabilities', 'number', '');
    const info: HwInfo = {
      cdev: field<string>(o, 'cdev', 'string', ''),
      devId: field<number>(o, 'dev_id', 'number', ''),
      outDataType: type,
      outDataTypeName: HW_INFO_TYPES[type] ?? `UNKNOWN(${type})`,
      outCapabilities: caps,
      capabilityNames: capabilityNames(caps),
      outMaxPasidLog2: field<number>(o, 'out_max_pasid_log2', 'number', ''),
    };
    if (isObj(o.vtd))
      info.vtd = {
        flags: field<number>(o.vtd, 'flags', 'number', 'vtd.'),
        capReg: hexBig(field<string>(o.vtd, 'cap_reg', 'string', 'vtd.'), 'vtd.cap_reg'),
        ecapReg: hexBig(field<string>(o.vtd, 'ecap_reg', 'string', 'vtd.'), 'vtd.ecap_reg'),
      };
    if (isObj(o.smmuv3)) {
      const idr = o.smmuv3.idr;
      if (!Array.isArray(idr) || idr.length !== 6) throw new Error(`iommufd-probe output: smmuv3.idr is ${JSON.stringify(idr)}, not 6 registers`);
      info.smmuv3 = {
        flags: field<number>(o.smmuv3, 'flags', 'number', 'smmuv3.'),
        idr: idr.map((v, i) => Number(hexBig(String(v), `smmuv3.idr[${i}]`))),
        iidr: Number(hexBig(field<string>(o.smmuv3, 'iidr', 'string', 'smmuv3.'), 'smmuv3.iidr')),
        aidr: Number(hexBig(field<string>(o.smmuv3, 'aidr', 'string', 'smmuv3.'), 'smmuv3.aidr')),
      };
    }
    return { ok: true, value: info };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

export function parseHwptAllocJson(text: string): Probed<HwptAllocProbe> {
  const parsed = probeObject(text);
  if (!parsed.ok) return parsed;
  const o = parsed.value;
  try {
    if (!Array.isArray(o.results)) throw new Error(`iommufd-probe output: results is ${JSON.stringify(o.results)}, not a list`);
    const results = o.results.map((r: unknown, i): HwptAllocResult => {
      if (!isObj(r)) throw new Error(`iommufd-probe output: results[${i}] is not an object`);
      const flags = Number(hexBig(field<string>(r, 'flags', 'string', `results[${i}].`), `results[${i}].flags`));
      const ok = field<boolean>(r, 'ok', 'boolean', `results[${i}].`);
      return ok ? { flags, ok, hwptId: field<number>(r, 'hwpt_id', 'number', `results[${i}].`) } : { flags, ok, errno: field<string>(r, 'errno', 'string', `results[${i}].`) };
    });
    return {
      ok: true,
      value: {
        cdev: field<string>(o, 'cdev', 'string', ''),
        devId: field<number>(o, 'dev_id', 'number', ''),
        ioasId: field<number>(o, 'ioas_id', 'number', ''),
        results,
      },
    };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

async function runProbe(args: string[], opts: ProbeOptions): Promise<{ stdout: string; reason?: string }> {
  const tool = opts.tool ?? probeToolPath();
  const timeout = scaled(opts.timeoutMs ?? 10_000);
  const r = await execa(tool, args, { reject: false, timeout, stdin: 'ignore' });
  if (r.timedOut) return { stdout: '', reason: `iommufd-probe ${args.join(' ')} did not finish within ${timeout} ms` };
  if (r.failed && !r.stdout.trim()) return { stdout: '', reason: `iommufd-probe ${args.join(' ')} failed: ${r.stderr.trim() || r.shortMessage}` };
  // On failure the helper prints one {"step","error"} object; an answer with a failed exit is not to be believed.
  if (r.failed && !/"error"\s*:/.test(r.stdout))
    return { stdout: '', reason: `iommufd-probe ${args.join(' ')} ${r.shortMessage} after printing an answer: ${JSON.stringify(r.stdout.slice(0, 200))}` };
  return { stdout: r.stdout };
}

/** IOMMU_GET_HW_INFO for the device behind `cdev` (/dev/vfio/devices/vfioN). */
export async function readHwInfo(cdev: string, opts: ProbeOptions = {}): Promise<Probed<HwInfo>> {
  const missing = probeUnavailableReason(cdev, opts);
  if (missing) return { ok: false, reason: missing, unavailable: true };
  const { stdout, reason } = await runProbe(['hw-info', ...(opts.devIommu ? ['--iommu', opts.devIommu] : []), cdev], opts);
  return reason ? { ok: false, reason } : parseHwInfoJson(stdout);
}

/** Asks IOMMU_HWPT_ALLOC (on a fresh IOAS) for a HWPT with each flags value; every granted HWPT is freed again. */
export async function probeHwptAlloc(cdev: string, flags: number[], opts: ProbeOptions = {}): Promise<Probed<HwptAllocProbe>> {
  if (!flags.length) throw new Error('probeHwptAlloc: no flags values given');
  const missing = probeUnavailableReason(cdev, opts);
  if (missing) return { ok: false, reason: missing, unavailable: true };
  const { stdout, reason } = await runProbe(
    ['hwpt-alloc', ...(opts.devIommu ? ['--iommu', opts.devIommu] : []), cdev, ...flags.map((f) => `0x${f.toString(16)}`)],
    opts,
  );
  return reason ? { ok: false, reason } : parseHwptAllocJson(stdout);
}

/** SMMU_IDR0/IDR1 fields the scenarios care about (SMMUv3 spec 6.3.1-2). */
export function decodeSmmuIdr(idr: number[]): { s1p: boolean; s2p: boolean; ats: boolean; pri: boolean; httu: number; ssidSize: number; sidSize: number } {
  const idr0 = idr[0] ?? 0;
  const idr1 = idr[1] ?? 0;
  return {
    s2p: (idr0 & 0x1) !== 0,
    s1p: (idr0 & 0x2) !== 0,
    httu: (idr0 >>> 6) & 0x3,
    ats: (idr0 & (1 << 10)) !== 0,
    pri: (idr0 & (1 << 16)) !== 0,
    sidSize: idr1 & 0x3f,
    ssidSize: (idr1 >>> 6) & 0x1f,
  };
}
