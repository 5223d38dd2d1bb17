/**
 * What a synthetic PCIe endpoint looks like, as plain data. The device model
 * builds config space from it; `validateDeviceDescription` checks data that
 * came from outside (a JSON file, a test) and names the field that is wrong;
 * `loadDeviceDescriptionFile` adds the file, its size limit and the line.
 */
import { readFileSync, statSync } from 'node:fs';
import { excerpt, SourceLines, sizeProblem } from '../util/source-lines.js';

export interface BarDescription {
  /** BAR number 0-5; a 64-bit BAR also takes the next number. */
  index: number;
  /** Bytes, a power of two, at least 16 (PCI's smallest memory BAR). */
  size: number;
  /** 64-bit memory BAR (default false). */
  is64?: boolean;
  prefetchable?: boolean;
}

export interface PasidDescription {
  /** Max PASID Width, 1-20 bits (PCIe caps it at 20). */
  widthBits: number;
  /** Execute Permission Supported. */
  exec: boolean;
  /** Privileged Mode Supported. */
  priv: boolean;
}

export interface AtsDescription {
  /** Invalidate Queue Depth, 0-31 (0 means 32). */
  invalidateQueueDepth: number;
  pageAlignedRequest: boolean;
  globalInvalidate: boolean;
}

export interface PriDescription {
  /** Outstanding Page Request Capacity. */
  outstandingPageRequests: number;
  /** PRG Response PASID Required. */
  prgResponsePasidRequired: boolean;
}

/**
 * How the function can be reset by software other than DEVICE_RESET (which is
 * always a full power-on reset). Linux tries, in order: device-specific, ACPI,
 * FLR, AF FLR, PM (D3hot→D0), bus; the first that the device offers wins. A
 * secondary bus reset costs L1 hundreds of milliseconds and makes L0 map the
 * device's DMA space again, so a good endpoint offers one of the first.
 */
export interface ResetDescription {
  /** DevCap bit 28: a write of DevCtl bit 15 (Initiate FLR) resets the function. */
  flr: boolean;
  /** PMCSR No_Soft_Reset clear: the D3hot→D0 transition resets the function. Needs pm. */
  pmSoftReset: boolean;
  /**
   * Status bit 0, Immediate Readiness: config requests succeed at any time after
   * any reset. True of this model (it answers at once), and Linux then skips
   * the 100 ms it otherwise sleeps after an FLR.
   */
  immediateReadiness: boolean;
}

/** What a description without `reset` gets: FLR, PM soft reset when it has PM, immediate readiness. */
export function defaultReset(pm: boolean): ResetDescription {
  return { flr: true, pmSoftReset: pm, immediateReadiness: true };
}

export interface DeviceDescription {
  /** Short name, used in logs and socket names. */
  name: string;
  vendorId: number;
  deviceId: number;
  subsystemVendorId: number;
  subsystemId: number;
  revision: number;
  /** 24-bit class code: base class, subclass, programming interface (e.g. 0xff0000). */
  classCode: number;
  bars: BarDescription[];
  /** Power Management capability. */
  pm: boolean;
  /** MSI capability (one vector, 64-bit); the server never raises it. */
  msi: boolean;
  pcie: {
    /** DevCap2 bit 20: Extended Fmt Field Supported. */
    extendedFmtField: boolean;
    /** DevCap2 bit 21: End-End TLP Prefix Supported. */
    endEndTlpPrefix: boolean;
  };
  /** Function-level resets offered; a description without it gets `defaultReset(pm)`. */
  reset?: ResetDescription;
  pasid?: PasidDescription;
  ats?: AtsDescription;
  pri?: PriDescription;
}

export class DeviceDescriptionError extends Error {
  override name = 'DeviceDescriptionError';
  constructor(
    readonly field: string,
    readonly detail: string,
    readonly deviceName?: string,
    /** The file and line, when the description came from one. */
    readonly where?: { file: string; line?: number | undefined },
  ) {
    const at = where ? `${where.file}${where.line ? `: line ${where.line}` : ''}: ` : '';
    super(`${at}device description${deviceName ? ` "${deviceName}"` : ''}: ${field} ${detail}`);
  }
}

/** Largest description file read: the built-in ones are under 1 KB as JSON. */
export const MAX_DESCRIPTION_BYTES = 64 << 10;

/**
 * Reads and validates a JSON description file. It is refused before reading
 * when over MAX_DESCRIPTION_BYTES; a syntax error names its line and column,
 * a bad field its path and line.
 */
export function loadDeviceDescriptionFile(path: string): DeviceDescription {
  const fail = (field: string, detail: string, line?: number): never => {
    throw new DeviceDescriptionError(field, detail, undefined, { file: path, line });
  };
  let text = '';
  try {
    const tooBig = sizeProblem(statSync(path).size, MAX_DESCRIPTION_BYTES, 'the file');
    if (tooBig) fail('(file)', tooBig);
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if (e instanceof DeviceDescriptionError) throw e;
    fail('(file)', `cannot be read: ${(e as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    // V8 names a position for some errors ("... at position N"), and the end
    // of input for a truncated file; give those as a line and column.
    const msg = (e as Error).message;
    const pos = /end of JSON input/.test(msg) ? text.length : Number(/at position (\d+)/.exec(msg)?.[1] ?? NaN);
    const before = Number.isFinite(pos) ? text.slice(0, pos) : '';
    const line = before.split('\n').length;
    const col = pos - before.lastIndexOf('\n');
    fail('(file)', `is not JSON${Number.isFinite(pos) ? ` at column ${col}` : ''}: ${excerpt(msg.replace(/ at position \d+/, ''), 120)}`, Number.isFinite(pos) ? line : undefined);
  }
  try {
    return validateDeviceDescription(data);
  } catch (e) {
    if (!(e instanceof DeviceDescriptionError)) throw e;
    throw new DeviceDescriptionError(e.field, e.detail, e.deviceName, { file: path, line: SourceLines.parse(text).lineOf(e.field) });
  }
}

type Obj = Record<string, unknown>;

/**
 * Checks `value` field by field and returns it typed. Unknown fields are
 * errors too: a misspelt "pasdi" must not silently give a device without PASID.
 */
export function validateDeviceDescription(value: unknown): DeviceDescription {
  // Set once the root is known to be an object; `fail` may run before that.
  let name: string | undefined;
  const fail = (field: string, detail: string): never => {
    throw new DeviceDescriptionError(field, detail, name);
  };
  const int = (o: Obj, key: string, path: string, min: number, max: number): number => {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      fail(path, `must be an integer in ${hex(min)}..${hex(max)}, got ${show(v)}`);
    }
    return v as number;
  };
  const bool = (o: Obj, key: string, path: string): boolean => {
    const v = o[key];
    if (typeof v !== 'boolean') fail(path, `must be true or false, got ${show(v)}`);
    return v as boolean;
  };
  const only = (o: Obj, path: string, keys: string[]): void => {
    for (const k of Object.keys(o)) if (!keys.includes(k)) fail(path ? `${path}.${k}` : k, `is not a known field (known: ${keys.join(', ')})`);
  };
  function object(v: unknown, path: string): Obj {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, `must be an object, got ${show(v)}`);
    return v as Obj;
  }

  const d = object(value, '(root)');
  name = typeof d.name === 'string' ? d.name : undefined;
  only(d, '', ['name', 'vendorId', 'deviceId', 'subsystemVendorId', 'subsystemId', 'revision', 'classCode', 'bars', 'pm', 'msi', 'pcie', 'reset', 'pasid', 'ats', 'pri']);
  if (typeof d.name !== 'string' || !/^[a-z0-9][a-z0-9-]*$/.test(d.name)) fail('name', `must be lower-case letters, digits and dashes, got ${show(d.name)}`);
  const out: DeviceDescription = {
    name: d.name as string,
    vendorId: int(d, 'vendorId', 'vendorId', 0, 0xfffe),
    deviceId: int(d, 'deviceId', 'deviceId', 0, 0xffff),
    subsystemVendorId: int(d, 'subsystemVendorId', 'subsystemVendorId', 0, 0xffff),
    subsystemId: int(d, 'subsystemId', 'subsystemId', 0, 0xffff),
    revision: int(d, 'revision', 'revision', 0, 0xff),
    classCode: int(d, 'classCode', 'classCode', 0, 0xffffff),
    bars: [],
    pm: bool(d, 'pm', 'pm'),
    msi: bool(d, 'msi', 'msi'),
    pcie: { extendedFmtField: false, endEndTlpPrefix: false },
  };
  if ((out.classCode >> 16) === 0x06) fail('classCode', `${hex(out.classCode)} is a bridge class; this model is a type-0 endpoint`);

  if (!Array.isArray(d.bars)) fail('bars', `must be an array, got ${show(d.bars)}`);
  const used = new Set<number>();
  (d.bars as unknown[]).forEach((b, i) => {
    const p = `bars[${i}]`;
    const o = object(b, p);
    only(o, p, ['index', 'size', 'is64', 'prefetchable']);
    const is64 = o.is64 === undefined ? false : bool(o, 'is64', `${p}.is64`);
    const index = int(o, 'index', `${p}.index`, 0, is64 ? 4 : 5);
    const size = int(o, 'size', `${p}.size`, 16, is64 ? 2 ** 40 : 2 ** 31);
    if (!Number.isInteger(Math.log2(size))) fail(`${p}.size`, `must be a power of two, got ${size}`);
    for (const n of is64 ? [index, index + 1] : [index]) {
      if (used.has(n)) fail(`${p}.index`, `BAR ${n} is already taken by another BAR`);
      used.add(n);
    }
    const prefetchable = o.prefetchable === undefined ? false : bool(o, 'prefetchable', `${p}.prefetchable`);
    out.bars.push({ index, size, is64, prefetchable });
  });

  const pcie = object(d.pcie, 'pcie');
  only(pcie, 'pcie', ['extendedFmtField', 'endEndTlpPrefix']);
  out.pcie = { extendedFmtField: bool(pcie, 'extendedFmtField', 'pcie.extendedFmtField'), endEndTlpPrefix: bool(pcie, 'endEndTlpPrefix', 'pcie.endEndTlpPrefix') };
  if (out.pcie.endEndTlpPrefix && !out.pcie.extendedFmtField) {
    fail('pcie.endEndTlpPrefix', 'needs pcie.extendedFmtField (PCIe: a function supporting End-End TLP Prefixes must support the extended Fmt field)');
  }

  if (d.reset === undefined) out.reset = defaultReset(out.pm);
  else {
    const o = object(d.reset, 'reset');
    only(o, 'reset', ['flr', 'pmSoftReset', 'immediateReadiness']);
    out.reset = { flr: bool(o, 'flr', 'reset.flr'), pmSoftReset: bool(o, 'pmSoftReset', 'reset.pmSoftReset'), immediateReadiness: bool(o, 'immediateReadiness', 'reset.immediateReadiness') };
    if (out.reset.pmSoftReset && !out.pm) fail('reset.pmSoftReset', 'needs pm (No_Soft_Reset lives in the Power Management capability)');
  }

  if (d.pasid !== undefined) {
    const o = object(d.pasid, 'pasid');
    only(o, 'pasid', ['widthBits', 'exec', 'priv']);
    out.pasid = { widthBits: int(o, 'widthBits', 'pasid.widthBits', 1, 20), exec: bool(o, 'exec', 'pasid.exec'), priv: bool(o, 'priv', 'pasid.priv') };
  }
  if (d.ats !== undefined) {
    const o = object(d.ats, 'ats');
    only(o, 'ats', ['invalidateQueueDepth', 'pageAlignedRequest', 'globalInvalidate']);
    out.ats = {
      invalidateQueueDepth: int(o, 'invalidateQueueDepth', 'ats.invalidateQueueDepth', 0, 31),
      pageAlignedRequest: bool(o, 'pageAlignedRequest', 'ats.pageAlignedRequest'),
      globalInvalidate: bool(o, 'globalInvalidate', 'ats.globalInvalidate'),
    };
  }
  if (d.pri !== undefined) {
    const o = object(d.pri, 'pri');
    only(o, 'pri', ['outstandingPageRequests', 'prgResponsePasidRequired']);
    out.pri = {
      outstandingPageRequests: int(o, 'outstandingPageRequests', 'pri.outstandingPageRequests', 1, 0xffffffff),
      prgResponsePasidRequired: bool(o, 'prgResponsePasidRequired', 'pri.prgResponsePasidRequired'),
    };
    if (!out.ats) fail('pri', 'needs ats (PCIe: Page Requests are only issued by ATS-capable functions)');
    if (out.pri.prgResponsePasidRequired && !out.pasid) fail('pri.prgResponsePasidRequired', 'needs pasid');
  }
  return out;
}

function hex(n: number): string {
  return n < 256 ? String(n) : `0x${n.toString(16)}`;
}

function show(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (typeof v === 'number' && Number.isInteger(v) && v > 255) return `${v} (0x${v.toString(16)})`;
  return excerpt(JSON.stringify(v) ?? String(v));
}
