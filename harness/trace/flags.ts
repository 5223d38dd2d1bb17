/**
 * iommufd uAPI numbers ↔ names (include/linux/iommufd.h, Linux 7.2), and QEMU's
 * internal vIOMMU flag bits. Unknown bits and values are shown as hex, never
 * dropped, so a new kernel or QEMU bit is visible in every message.
 */
import type { FieldValue } from './formats.js';

export type BitTable = Readonly<Record<string, number>>;

/** enum iommufd_hwpt_alloc_flags */
export const HWPT_ALLOC_FLAGS = {
  NEST_PARENT: 1 << 0,
  DIRTY_TRACKING: 1 << 1,
  FAULT_ID_VALID: 1 << 2,
  PASID: 1 << 3,
} as const satisfies BitTable;

/** enum iommufd_hw_capabilities */
export const HW_CAPS = {
  DIRTY_TRACKING: 1 << 0,
  PCI_PASID_EXEC: 1 << 1,
  PCI_PASID_PRIV: 1 << 2,
  PCI_ATS_NOT_SUPPORTED: 1 << 3,
} as const satisfies BitTable;

/** enum iommu_hw_info_type */
export const HW_INFO_TYPES = { NONE: 0, INTEL_VTD: 1, ARM_SMMUV3: 2, TEGRA241_CMDQV: 3, AMD: 4 } as const satisfies BitTable;

/** enum iommu_hwpt_data_type */
export const HWPT_DATA_TYPES = { NONE: 0, VTD_S1: 1, ARM_SMMUV3: 2, AMD_GUEST: 3 } as const satisfies BitTable;

/** enum iommu_viommu_type */
export const VIOMMU_TYPES = { DEFAULT: 0, ARM_SMMUV3: 1, TEGRA241_CMDQV: 2 } as const satisfies BitTable;

/** QEMU's VIOMMU_FLAG_* (what the vIOMMU asks of the host HWPT). */
export const VIOMMU_FLAGS = {
  WANT_NESTING_PARENT: 1 << 0,
  PASID_SUPPORTED: 1 << 1,
  WANT_NESTING_DIRTY_TRACKING: 1 << 2,
  WANT_PASID_ATTACH: 1 << 3,
} as const satisfies BitTable;

export type HwptFlagName = keyof typeof HWPT_ALLOC_FLAGS;

/** Linux errno values seen from iommufd and vfio ioctls. */
export const ERRNO = {
  EPERM: 1, ENOENT: 2, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, EBADF: 9, EAGAIN: 11, ENOMEM: 12,
  EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, ENODEV: 19, EINVAL: 22, ENOSPC: 28, ERANGE: 34,
  ENOSYS: 38, EOVERFLOW: 75, EOPNOTSUPP: 95, EADDRINUSE: 98, ETIMEDOUT: 110,
} as const satisfies BitTable;

const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

function toNumber(value: FieldValue, what: string): number {
  if (typeof value === 'number') return value;
  if (typeof value === 'bigint' && value <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(value);
  throw new Error(`${what}: expected a number, got ${JSON.stringify(String(value))}`);
}

/** Names of the set bits, low to high; unknown bits as one hex value at the end. */
export function decodeBits(table: BitTable, value: number | bigint): string[] {
  const names: string[] = [];
  let rest = BigInt(value);
  for (const [name, bit] of Object.entries(table)) {
    const b = BigInt(bit);
    if (b !== 0n && (rest & b) === b) {
      names.push(name);
      rest &= ~b;
    }
  }
  if (rest !== 0n) names.push(hex(rest));
  return names;
}

/** A name without any of `prefixes` (`IOMMU_HWPT_ALLOC_PASID` → `PASID`). */
function bare(name: string, prefixes: readonly string[]): string {
  const upper = name.toUpperCase();
  for (const p of prefixes) if (upper.startsWith(p)) return upper.slice(p.length);
  return upper;
}

/** Names (or hex strings for unknown bits) → the value; an unknown name throws, naming it. */
export function encodeBits(table: BitTable, names: readonly (string | number)[], prefixes: readonly string[] = []): number {
  let v = 0;
  for (const n of names) {
    if (typeof n === 'number') v |= n;
    else if (/^0x[0-9a-f]+$/i.test(n)) v |= parseInt(n, 16);
    else {
      const bit = table[bare(n, prefixes)];
      if (bit === undefined) throw new Error(`unknown flag name ${JSON.stringify(n)} (known: ${Object.keys(table).join(', ')})`);
      v |= bit;
    }
  }
  return v;
}

/** The name of an enum value, or its hex when unknown. */
export function decodeEnum(table: BitTable, value: number | bigint): string {
  for (const [name, v] of Object.entries(table)) if (BigInt(v) === BigInt(value)) return name;
  return hex(value);
}

export function encodeEnum(table: BitTable, name: string | number, prefixes: readonly string[] = []): number {
  if (typeof name === 'number') return name;
  if (/^0x[0-9a-f]+$/i.test(name)) return parseInt(name, 16);
  const v = table[bare(name, prefixes)];
  if (v === undefined) throw new Error(`unknown name ${JSON.stringify(name)} (known: ${Object.keys(table).join(', ')})`);
  return v;
}

const HWPT_PREFIXES = ['IOMMU_HWPT_ALLOC_'];

export const hwptFlagNames = (v: number | bigint): string[] => decodeBits(HWPT_ALLOC_FLAGS, v);
export const hwptFlagsFromNames = (names: readonly (string | number)[]): number =>
  encodeBits(HWPT_ALLOC_FLAGS, names, HWPT_PREFIXES);
export const hwCapNames = (v: number | bigint): string[] => decodeBits(HW_CAPS, v);
export const viommuFlagNames = (v: number | bigint): string[] => decodeBits(VIOMMU_FLAGS, v);
export const hwInfoTypeName = (v: number | bigint): string => decodeEnum(HW_INFO_TYPES, v);
export const hwptDataTypeName = (v: number | bigint): string => decodeEnum(HWPT_DATA_TYPES, v);
export const viommuTypeName = (v: number | bigint): string => decodeEnum(VIOMMU_TYPES, v);

/** Flags rendered for a message: `0xb (NEST_PARENT|DIRTY_TRACKING|PASID)`. */
export function formatHwptFlags(v: number): string {
  const names = hwptFlagNames(v);
  return `${hex(v)} (${names.length ? names.join('|') : 'none'})`;
}

/** `-95` → `EOPNOTSUPP`; 0 → `OK`; unknown → `-errno 123`. */
export function errnoName(ret: number): string {
  if (ret === 0) return 'OK';
  const n = Math.abs(ret);
  for (const [name, v] of Object.entries(ERRNO)) if (v === n) return name;
  return `errno ${ret}`;
}

/** `'EOPNOTSUPP'` or `-95` → -95. */
export function errnoValue(nameOrRet: string | number): number {
  if (typeof nameOrRet === 'number') return nameOrRet;
  if (nameOrRet === 'OK') return 0;
  const v = (ERRNO as Record<string, number>)[nameOrRet];
  if (v === undefined) throw new Error(`unknown errno name ${JSON.stringify(nameOrRet)}`);
  return -v;
}

/**
 * What the number in a trace event's `ret` means. QEMU traces three kinds
 * (read from backends/iommufd.c and hw/i386/intel_iommu_accel.c; 11.1.3's
 * formats are the same):
 * - `ioctl`: the raw ioctl(2) result, `ret = ioctl(...); trace_...(..., ret)`:
 *   0 or -1, never -errno. The errno is in QEMU's error message
 *   (`error_setg_errno(errp, errno, "Failed to allocate hwpt")`) or in the
 *   kernel's answer (kprobes). alloc_hwpt, free_id, alloc_viommu, alloc_vdev,
 *   alloc_veventq/alloc_eventq, alloc_hw_queue, map_dma, map_file_dma, unmap_dma.
 * - `errno`: `ret ? errno : 0`, a positive errno: set_dirty, get_dirty_bitmap,
 *   invalidate_cache (upstream's merged form; early patch versions traced ret).
 * - `bool`: the vtd_device_* helpers return bool: 1 = success, 0 = failure.
 * - `enoent`: unmap_dma_non_exist, traced only for an unmap the kernel
 *   refused with ENOENT, which QEMU then treats as success.
 * A negative value other than -1 under `ioctl` can only be a -errno (a build
 * that traces one): it is named, with its source `trace`.
 */
export type RetEncoding = 'ioctl' | 'errno' | 'bool' | 'enoent';

export const RET_ENCODING: Readonly<Record<string, RetEncoding>> = {
  iommufd_backend_alloc_hwpt: 'ioctl',
  iommufd_backend_free_id: 'ioctl',
  iommufd_backend_alloc_viommu: 'ioctl',
  iommufd_backend_alloc_vdev: 'ioctl',
  iommufd_backend_alloc_veventq: 'ioctl',
  iommufd_viommu_alloc_eventq: 'ioctl',
  iommufd_backend_alloc_hw_queue: 'ioctl',
  iommufd_backend_map_dma: 'ioctl',
  iommufd_backend_map_file_dma: 'ioctl',
  iommufd_backend_unmap_dma: 'ioctl',
  // Traced only when the unmap failed with ENOENT, which QEMU then counts as success.
  iommufd_backend_unmap_dma_non_exist: 'enoent',
  iommufd_backend_set_dirty: 'errno',
  iommufd_backend_get_dirty_bitmap: 'errno',
  iommufd_backend_invalidate_cache: 'errno',
  vtd_device_attach_hwpt: 'bool',
  vtd_device_detach_hwpt: 'bool',
  vtd_device_reattach_def_hwpt: 'bool',
};

export interface RetOutcome {
  ok: boolean;
  /** The errno name, only when the trace itself carries it. */
  errno?: string;
  /** For messages: `OK`, `failed (ioctl returned -1; the errno is not in the trace)`, `EOPNOTSUPP`, ... */
  text: string;
}

/**
 * The outcome a trace `ret` stands for; undefined for an event whose `ret`
 * the table does not cover (then nothing is claimed about it).
 */
export function retOutcome(event: string, ret: number): RetOutcome | undefined {
  const enc = RET_ENCODING[event];
  if (enc === undefined) return undefined;
  if (enc === 'bool') return ret === 0 ? { ok: false, text: 'failed (returned false)' } : { ok: true, text: 'OK' };
  if (enc === 'enoent') return { ok: true, errno: 'ENOENT', text: 'ENOENT: no such mapping, which QEMU counts as success' };
  if (ret === 0) return { ok: true, text: 'OK' };
  if (enc === 'errno') return ret > 0 ? { ok: false, errno: errnoName(-ret), text: errnoName(-ret) } : { ok: false, text: `failed (ret ${ret})` };
  if (ret === -1) return { ok: false, text: 'failed (ioctl returned -1; the errno is not in the trace)' };
  return ret < 0 ? { ok: false, errno: errnoName(ret), text: errnoName(ret) } : { ok: false, text: `failed (ret ${ret})` };
}

/** glibc's strerror(3) texts, as QEMU's `%m` and error_setg_errno print them. */
export const ERRNO_TEXT: Readonly<Record<string, keyof typeof ERRNO>> = {
  'Operation not permitted': 'EPERM',
  'No such file or directory': 'ENOENT',
  'Interrupted system call': 'EINTR',
  'Input/output error': 'EIO',
  'No such device or address': 'ENXIO',
  'Argument list too long': 'E2BIG',
  'Bad file descriptor': 'EBADF',
  'Resource temporarily unavailable': 'EAGAIN',
  'Cannot allocate memory': 'ENOMEM',
  'Permission denied': 'EACCES',
  'Bad address': 'EFAULT',
  'Device or resource busy': 'EBUSY',
  'File exists': 'EEXIST',
  'No such device': 'ENODEV',
  'Invalid argument': 'EINVAL',
  'No space left on device': 'ENOSPC',
  'Numerical result out of range': 'ERANGE',
  'Function not implemented': 'ENOSYS',
  'Value too large for defined data type': 'EOVERFLOW',
  'Operation not supported': 'EOPNOTSUPP',
  'Address already in use': 'EADDRINUSE',
  'Connection timed out': 'ETIMEDOUT',
};

/** `Operation not supported` → `EOPNOTSUPP`; undefined for a text the table lacks. */
export function errnoFromText(text: string): string | undefined {
  return ERRNO_TEXT[text.trim()];
}

/**
 * Decoded names for the fields of the iommufd/vfio events whose numbers are
 * flags or enums; `{}` for other events. Used by `trace decode` and messages.
 * `ret` is decoded by its encoding (RET_ENCODING): a raw ioctl -1 is shown as
 * a failure without an errno, never as EPERM.
 */
export function decodedFields(event: string, fields: Record<string, FieldValue>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const f = (k: string): number | undefined => (typeof fields[k] === 'number' || typeof fields[k] === 'bigint' ? toNumber(fields[k]!, k) : undefined);
  if (event === 'iommufd_backend_alloc_hwpt') {
    const flags = f('flags');
    if (flags !== undefined) out.flags = hwptFlagNames(flags);
    const t = f('hwpt_type');
    if (t !== undefined) out.hwpt_type = hwptDataTypeName(t);
  } else if (event === 'iommufd_backend_alloc_viommu') {
    const t = f('type');
    if (t !== undefined) out.type = viommuTypeName(t);
  }
  const ret = f('ret');
  if (ret !== undefined) {
    const o = retOutcome(event, ret);
    if (o && (!o.ok || o.errno)) out.ret = o.text;
  }
  return out;
}
