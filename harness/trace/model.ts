/**
 * A model of iommufd objects built from trace records: what QEMU allocated,
 * attached and freed, in order. Objects are keyed by (iommufd fd, id) and
 * tracked while live, because the kernel hands out the lowest free id again
 * after a free (hot-plug cycles reuse ids).
 *
 * Records from another source (kernel kprobes, a later module) enter through
 * `addKernel` and are joined to QEMU's requests by (dev_id, pt_id, flags, order).
 */
import type { FieldValue } from './formats.js';
import { errnoName, hwptDataTypeName, hwptFlagNames, viommuTypeName } from './flags.js';
import type { Diagnostic, EventRecord, ParseResult, TraceRecord } from './parse.js';

export type ObjectKind = 'ioas' | 'hwpt' | 'viommu' | 'vdevice' | 'veventq' | 'hw_queue';

export interface IommufdObject {
  kind: ObjectKind;
  iommufd: number;
  id: number;
  /** The allocation's record. */
  record: EventRecord;
  /** The successful free_id's record, once freed. */
  freed?: EventRecord;
}

/** One HWPT allocation request, successful or not. */
export interface HwptAlloc {
  iommufd: number;
  devId: number;
  ptId: number;
  /** What pt_id named when the request was made, if the model saw it allocated. */
  ptKind?: ObjectKind;
  flags: number;
  flagNames: string[];
  hwptType: number;
  hwptTypeName: string;
  len: number;
  /** out_hwpt: the new HWPT's id (0 on failure). */
  id: number;
  ret: number;
  /** `OK` or the errno name of `ret`. */
  errno: string;
  ok: boolean;
  record: EventRecord;
  object?: IommufdObject;
  /** The kernel's answer joined to this request (kprobes), when there is one. */
  kernel?: KernelRecord;
}

export interface DeviceBind {
  iommufd: number;
  name: string;
  fd: number;
  devId: number;
  record: EventRecord;
}

export interface Attach {
  iommufd: number;
  name: string;
  devfd: number;
  /** undefined for older QEMU's attach event, which has no PASID. */
  pasid?: number;
  targetId: number;
  targetKind?: ObjectKind;
  /** From the device's bind line, when the model saw it. */
  devId?: number;
  record: EventRecord;
}

export interface Detach {
  iommufd: number;
  name: string;
  pasid?: number;
  devId?: number;
  record: EventRecord;
}

export interface VtdHwptOp {
  op: 'attach' | 'detach' | 'reattach';
  devId: number;
  pasid: number;
  hwptId?: number;
  ret: number;
  record: EventRecord;
}

export interface Viommu {
  iommufd: number;
  devId: number;
  type: number;
  typeName: string;
  hwptId: number;
  dataLen: number;
  id: number;
  ret: number;
  record: EventRecord;
}

export interface Vdevice {
  iommufd: number;
  devId: number;
  viommuId: number;
  virtId: number | bigint;
  id: number;
  ret: number;
  record: EventRecord;
}

export interface DirtySet {
  iommufd: number;
  hwptId: number;
  enable: boolean;
  ret: number;
  record: EventRecord;
}

export interface FailedOp {
  what: string;
  ret: number;
  errno: string;
  record: EventRecord;
}

/**
 * A record from another source than QEMU's trace, e.g. a kprobe on
 * iommufd_hwpt_alloc: `{kind:'kernel', event:'hwpt_alloc', fields:{flags, dev_id, pt_id, ret}}`.
 */
export interface KernelRecord {
  kind: 'kernel';
  event: string;
  fields: Record<string, FieldValue>;
  line: number;
  raw: string;
  time?: string;
  /** Where it came from, e.g. `tracefs:kp/hwpt_alloc`. */
  source: string;
}

export interface MapCounts {
  map: number;
  mapFailed: number;
  unmap: number;
  unmapFailed: number;
  /** Successful maps per IOAS id. */
  byIoas: Map<number, number>;
}

export interface KernelJoin {
  pairs: { request: HwptAlloc; kernel: KernelRecord }[];
  requestsWithoutAnswer: HwptAlloc[];
  answersWithoutRequest: KernelRecord[];
}

type Handler = (m: IommufdModel, r: EventRecord) => void;

function num(r: EventRecord, ...names: string[]): number {
  for (const n of names) {
    const v = r.fields[n];
    if (typeof v === 'number') return v;
    if (typeof v === 'bigint') return Number(v);
  }
  throw new Error(`line ${r.line}: ${r.event} has none of the fields ${names.join(', ')} (has ${Object.keys(r.fields).join(', ')})`);
}

function optNum(r: EventRecord, ...names: string[]): number | undefined {
  return names.some((n) => n in r.fields) ? num(r, ...names) : undefined;
}

function str(r: EventRecord, ...names: string[]): string {
  for (const n of names) {
    const v = r.fields[n];
    if (v !== undefined) return String(v);
  }
  throw new Error(`line ${r.line}: ${r.event} has none of the fields ${names.join(', ')}`);
}

/**
 * Field names are the ones formats.ts derives from 11.1.3's formats; the
 * alternatives cover the C argument names, which older formats fall back to.
 */
const HANDLERS: Record<string, Handler> = {
  iommufd_backend_alloc_ioas: (m, r) => m.allocate('ioas', num(r, 'iommufd'), num(r, 'ioas'), r),
  iommufd_cdev_alloc_ioas: (m, r) => {
    // Logged right after the backend's own line for the same IOAS; alone when only cdev events are on.
    const key = IommufdModel.key(num(r, 'iommufd'), num(r, 'ioasid', 'ioas_id'));
    if (!m.isLive(key)) m.allocate('ioas', num(r, 'iommufd'), num(r, 'ioasid', 'ioas_id'), r);
  },
  iommufd_backend_alloc_hwpt: (m, r) => m.addHwpt(r),
  iommufd_backend_free_id: (m, r) => m.free(r),
  iommufd_backend_alloc_viommu: (m, r) => {
    const v: Viommu = {
      iommufd: num(r, 'iommufd'), devId: num(r, 'dev_id'), type: num(r, 'type'), typeName: viommuTypeName(num(r, 'type')),
      hwptId: num(r, 'hwpt_id'), dataLen: num(r, 'data_len'), id: num(r, 'viommu_id'), ret: num(r, 'ret'), record: r,
    };
    m.viommus.push(v);
    if (v.ret === 0) m.allocate('viommu', v.iommufd, v.id, r);
  },
  iommufd_backend_alloc_vdev: (m, r) => {
    const virt = r.fields.virt_id;
    const v: Vdevice = {
      iommufd: num(r, 'iommufd'), devId: num(r, 'dev_id'), viommuId: num(r, 'viommu_id'),
      virtId: typeof virt === 'bigint' ? virt : num(r, 'virt_id'), id: num(r, 'vdev_id'), ret: num(r, 'ret'), record: r,
    };
    m.vdevices.push(v);
    if (v.ret === 0) m.allocate('vdevice', v.iommufd, v.id, r);
  },
  iommufd_viommu_alloc_eventq: (m, r) => {
    if (num(r, 'ret') === 0) m.allocate('veventq', num(r, 'iommufd'), num(r, 'veventq_id'), r);
  },
  iommufd_backend_alloc_hw_queue: (m, r) => {
    if (num(r, 'ret') === 0) m.allocate('hw_queue', num(r, 'iommufd'), num(r, 'queue_id'), r);
  },
  iommufd_backend_set_dirty: (m, r) =>
    m.dirty.push({ iommufd: num(r, 'iommufd'), hwptId: num(r, 'hwpt', 'hwpt_id'), enable: num(r, 'enable', 'start') !== 0, ret: num(r, 'ret'), record: r }),
  iommufd_backend_map_dma: (m, r) => m.countMap(r, 'map'),
  iommufd_backend_map_file_dma: (m, r) => m.countMap(r, 'map'),
  iommufd_backend_unmap_dma: (m, r) => m.countMap(r, 'unmap'),
  iommufd_cdev_connect_and_bind: (m, r) => {
    const b: DeviceBind = { iommufd: num(r, 'iommufd'), name: str(r, 'name'), fd: num(r, 'fd', 'devfd'), devId: num(r, 'devid'), record: r };
    m.binds.push(b);
  },
  iommufd_cdev_pasid_attach_ioas_hwpt: (m, r) => m.addAttach(r),
  iommufd_cdev_attach_ioas_hwpt: (m, r) => m.addAttach(r),
  iommufd_cdev_pasid_detach_ioas_hwpt: (m, r) => m.addDetach(r),
  iommufd_cdev_detach_ioas_hwpt: (m, r) => m.addDetach(r),
  vtd_device_attach_hwpt: (m, r) => m.addVtd('attach', r),
  vtd_device_detach_hwpt: (m, r) => m.addVtd('detach', r),
  vtd_device_reattach_def_hwpt: (m, r) => m.addVtd('reattach', r),
};

/** Events the model reads; other records pass by untouched. */
export const MODEL_EVENTS: readonly string[] = Object.keys(HANDLERS);

export class IommufdModel {
  readonly objects: IommufdObject[] = [];
  readonly hwptAllocs: HwptAlloc[] = [];
  readonly binds: DeviceBind[] = [];
  readonly attaches: Attach[] = [];
  readonly detaches: Detach[] = [];
  readonly vtd: VtdHwptOp[] = [];
  readonly viommus: Viommu[] = [];
  readonly vdevices: Vdevice[] = [];
  readonly frees: EventRecord[] = [];
  /** Successful frees of ids the model never saw allocated (tracing began later, or a bug). */
  readonly unmatchedFrees: EventRecord[] = [];
  readonly dirty: DirtySet[] = [];
  readonly maps: MapCounts = { map: 0, mapFailed: 0, unmap: 0, unmapFailed: 0, byIoas: new Map() };
  readonly kernel: KernelRecord[] = [];
  /** Every record the model used, in order: the source of trace excerpts. */
  readonly used: EventRecord[] = [];
  /** Lines that did not parse: kept out of the model, shown in messages. */
  readonly diagnostics: Diagnostic[] = [];
  /** Inconsistencies, e.g. an id allocated twice without a free between. */
  readonly anomalies: string[] = [];
  private readonly live = new Map<string, IommufdObject>();

  static key(iommufd: number, id: number): string {
    return `${iommufd}/${id}`;
  }

  static fromRecords(records: Iterable<TraceRecord>, diagnostics: Iterable<Diagnostic> = []): IommufdModel {
    const m = new IommufdModel();
    for (const r of records) m.add(r);
    m.diagnostics.push(...diagnostics);
    return m;
  }

  static fromParse(p: ParseResult): IommufdModel {
    return IommufdModel.fromRecords(p.records, p.diagnostics);
  }

  /** Feeds one record (incremental use with a follower); raw records are ignored. */
  add(r: TraceRecord): void {
    if (r.kind !== 'event') return;
    const h = HANDLERS[r.event];
    if (!h) return;
    this.used.push(r);
    try {
      h(this, r);
    } catch (e) {
      // Another build's format may name a field differently: say which, keep going.
      this.anomalies.push((e as Error).message);
    }
  }

  /** A record from another source, e.g. a kprobe. */
  addKernel(r: KernelRecord): void {
    this.kernel.push(r);
  }

  isLive(key: string): boolean {
    return this.live.has(key);
  }

  /** @internal used by the handlers */
  allocate(kind: ObjectKind, iommufd: number, id: number, record: EventRecord): IommufdObject {
    const key = IommufdModel.key(iommufd, id);
    const prev = this.live.get(key);
    if (prev) this.anomalies.push(`line ${record.line}: ${kind} ${id} allocated while ${prev.kind} ${id} from line ${prev.record.line} was never freed`);
    const o: IommufdObject = { kind, iommufd, id, record };
    this.objects.push(o);
    this.live.set(key, o);
    return o;
  }

  /** @internal */
  free(r: EventRecord): void {
    this.frees.push(r);
    if (num(r, 'ret') !== 0) return;
    const key = IommufdModel.key(num(r, 'iommufd'), num(r, 'id'));
    const o = this.live.get(key);
    if (!o) {
      this.unmatchedFrees.push(r);
      return;
    }
    o.freed = r;
    this.live.delete(key);
  }

  /** @internal */
  addHwpt(r: EventRecord): void {
    const iommufd = num(r, 'iommufd');
    const ptId = num(r, 'pt_id');
    const flags = num(r, 'flags');
    const hwptType = num(r, 'hwpt_type', 'data_type');
    const ret = num(r, 'ret');
    const h: HwptAlloc = {
      iommufd, devId: num(r, 'dev_id'), ptId, flags, flagNames: hwptFlagNames(flags), hwptType,
      hwptTypeName: hwptDataTypeName(hwptType), len: num(r, 'len', 'data_len'), id: num(r, 'out_hwpt', 'out_hwpt_id'),
      ret, errno: errnoName(ret), ok: ret === 0, record: r,
    };
    const pt = this.live.get(IommufdModel.key(iommufd, ptId));
    if (pt) h.ptKind = pt.kind;
    if (h.ok) h.object = this.allocate('hwpt', iommufd, h.id, r);
    this.hwptAllocs.push(h);
  }

  /** @internal */
  addAttach(r: EventRecord): void {
    const iommufd = num(r, 'iommufd');
    const name = str(r, 'name');
    const a: Attach = { iommufd, name, devfd: num(r, 'devfd'), targetId: num(r, 'id'), record: r };
    const pasid = optNum(r, 'pasid');
    if (pasid !== undefined) a.pasid = pasid;
    const target = this.live.get(IommufdModel.key(iommufd, a.targetId));
    if (target) a.targetKind = target.kind;
    const devId = this.devIdOf(name);
    if (devId !== undefined) a.devId = devId;
    this.attaches.push(a);
  }

  /** @internal */
  addDetach(r: EventRecord): void {
    const name = str(r, 'name');
    const d: Detach = { iommufd: num(r, 'iommufd'), name, record: r };
    const pasid = optNum(r, 'pasid');
    if (pasid !== undefined) d.pasid = pasid;
    const devId = this.devIdOf(name);
    if (devId !== undefined) d.devId = devId;
    this.detaches.push(d);
  }

  /** @internal */
  addVtd(op: VtdHwptOp['op'], r: EventRecord): void {
    const v: VtdHwptOp = { op, devId: num(r, 'dev_id'), pasid: num(r, 'pasid'), ret: num(r, 'ret'), record: r };
    const hwptId = optNum(r, 'hwpt_id');
    if (hwptId !== undefined) v.hwptId = hwptId;
    this.vtd.push(v);
  }

  /** @internal */
  countMap(r: EventRecord, op: 'map' | 'unmap'): void {
    const ok = num(r, 'ret') === 0;
    if (op === 'map') {
      if (!ok) this.maps.mapFailed++;
      else {
        this.maps.map++;
        const ioas = num(r, 'ioas');
        this.maps.byIoas.set(ioas, (this.maps.byIoas.get(ioas) ?? 0) + 1);
      }
    } else if (ok) this.maps.unmap++;
    else this.maps.unmapFailed++;
  }

  /** The devid of the last bind of device `name` (a sysfs name or cdev path). */
  devIdOf(name: string): number | undefined {
    for (let i = this.binds.length - 1; i >= 0; i--) if (this.binds[i]!.name === name) return this.binds[i]!.devId;
    return undefined;
  }

  /** Objects allocated and not (successfully) freed, in allocation order. */
  liveObjects(): IommufdObject[] {
    return [...this.live.values()].sort((a, b) => a.record.line - b.record.line);
  }

  /** Successful HWPT allocations per dev_id. */
  allocationsPerDevice(): Map<number, HwptAlloc[]> {
    const out = new Map<number, HwptAlloc[]>();
    for (const h of this.hwptAllocs) {
      if (!h.ok) continue;
      const list = out.get(h.devId) ?? [];
      list.push(h);
      out.set(h.devId, list);
    }
    return out;
  }

  /** Every request the kernel refused, with its errno name. */
  failures(): FailedOp[] {
    const out: FailedOp[] = [];
    for (const r of this.used) {
      const ret = r.fields.ret;
      if (typeof ret === 'number' && ret < 0) out.push({ what: r.event, ret, errno: errnoName(ret), record: r });
    }
    return out;
  }

  failedHwptAllocs(): HwptAlloc[] {
    return this.hwptAllocs.filter((h) => !h.ok);
  }

  /**
   * Pairs each HWPT request with the kernel's `hwpt_alloc` answer having the
   * same dev_id, pt_id and flags, first-come first-joined; sets `request.kernel`.
   */
  joinKernel(): KernelJoin {
    const answers = this.kernel.filter((k) => k.event === 'hwpt_alloc');
    const taken = new Set<KernelRecord>();
    const join: KernelJoin = { pairs: [], requestsWithoutAnswer: [], answersWithoutRequest: [] };
    for (const req of this.hwptAllocs) {
      const k = answers.find(
        (a) => !taken.has(a) && a.fields.dev_id === req.devId && a.fields.pt_id === req.ptId && a.fields.flags === req.flags,
      );
      if (k) {
        taken.add(k);
        req.kernel = k;
        join.pairs.push({ request: req, kernel: k });
      } else {
        delete req.kernel;
        join.requestsWithoutAnswer.push(req);
      }
    }
    join.answersWithoutRequest = answers.filter((a) => !taken.has(a));
    return join;
  }
}

/** Lines with their numbers, for messages: `  L12: iommufd_backend_alloc_hwpt  ...`. */
export function excerpt(records: readonly { line: number; raw: string }[], max = 20): string {
  if (records.length === 0) return '  (no matching trace lines)';
  const shown = records.length > max ? records.slice(-max) : records;
  const lines = shown.map((r) => `  L${r.line}: ${r.raw}`);
  if (records.length > max) lines.unshift(`  … ${records.length - max} earlier lines`);
  return lines.join('\n');
}
