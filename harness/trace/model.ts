/**
 * A model of iommufd objects built from trace records: what QEMU allocated,
 * attached and freed, in order. Objects are keyed by (iommufd fd, id) and
 * tracked while live, because the kernel hands out the lowest free id again
 * after a free (hot-plug cycles reuse ids).
 *
 * What a trace `ret` means depends on the event (flags.ts RET_ENCODING): the
 * `(%d)` of alloc_hwpt, free_id, alloc_viommu, alloc_vdev and map_dma is the
 * raw ioctl result, 0 or -1, so the trace says THAT a request failed but not
 * why. The errno comes from elsewhere, and each result says where from:
 * - `kernel`: the kernel's own answer (kprobes, `addKernel` + `joinKernel`);
 * - `qemu-trace-message`: QEMU's error text carried in the trace itself
 *   (`iommufd_cdev_fail_attach_existing_container`);
 * - `qemu-message`: QEMU's error text on stderr or in a QMP error
 *   (`addQemuMessages`), e.g. "Failed to allocate hwpt: Operation not supported";
 * - `trace`: a build whose trace carries the errno (positive errno events, or
 *   a negative value other than -1).
 */
import type { FieldValue } from './formats.js';
import { errnoFromText, errnoName, ERRNO_TEXT, hwptDataTypeName, hwptFlagNames, retOutcome, viommuTypeName } from './flags.js';
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

export type ErrnoSource = 'trace' | 'kernel' | 'qemu-trace-message' | 'qemu-message';

/** One piece of evidence for why a request failed. */
export interface ErrnoEvidence {
  errno: string;
  source: ErrnoSource;
  /** The line or message that says so. */
  evidence: string;
}

/** The outcome of one traced request, and where its errno (if known) comes from. */
export interface IoctlResult {
  /** The number the trace printed; see RET_ENCODING for what it means per event. */
  ret: number;
  ok: boolean;
  /** The errno name when some source gives it (never guessed from a raw -1). */
  errno?: string;
  errnoSource?: ErrnoSource;
  /** Every source that named an errno, in precedence order (trace, kernel, QEMU's trace message, QEMU's message). */
  errnoEvidence: ErrnoEvidence[];
  /** In words: `OK`, `EOPNOTSUPP (kernel: ...)`, `failed (ioctl returned -1; the errno is not in the trace)`. */
  outcome: string;
  record: EventRecord;
}

/** What an HWPT is for: the parent (or only) HWPT on the IOAS; SMMUv3 accel's abort and bypass HWPTs; a nested stage-1 HWPT. */
export type HwptRole = 'parent' | 'abort' | 'bypass' | 'nested';

/** One HWPT allocation request, successful or not. */
export interface HwptAlloc extends IoctlResult {
  iommufd: number;
  devId: number;
  ptId: number;
  /** What pt_id named when the request was made, if the model saw it allocated. */
  ptKind?: ObjectKind;
  /**
   * parent: pt_id is an IOAS; nested: pt_id is an HWPT (VT-d stage 1) or a
   * vIOMMU after its abort and bypass HWPTs; abort/bypass: the first and second
   * HWPT on a vIOMMU (hw/arm/smmuv3-accel.c smmuv3_accel_alloc_viommu allocates
   * abort first, then bypass). Undefined when pt_id was never seen allocated.
   */
  role?: HwptRole;
  flags: number;
  flagNames: string[];
  hwptType: number;
  hwptTypeName: string;
  len: number;
  /** out_hwpt: the new HWPT's id (0 on failure). */
  id: number;
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
  /** The target HWPT's role, when the target is an HWPT the model saw allocated. */
  targetRole?: HwptRole;
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

export interface VtdHwptOp extends IoctlResult {
  op: 'attach' | 'detach' | 'reattach';
  devId: number;
  pasid: number;
  hwptId?: number;
}

export interface Viommu extends IoctlResult {
  iommufd: number;
  devId: number;
  type: number;
  typeName: string;
  hwptId: number;
  /** Absent in builds whose format has no data_ptr/data_len (upstream's). */
  dataLen?: number;
  id: number;
  kernel?: KernelRecord;
}

export interface Vdevice extends IoctlResult {
  iommufd: number;
  devId: number;
  viommuId: number;
  virtId: number | bigint;
  id: number;
}

export interface Veventq extends IoctlResult {
  iommufd: number;
  viommuId: number;
  type: number;
  id: number;
}

export interface DirtySet extends IoctlResult {
  iommufd: number;
  hwptId: number;
  enable: boolean;
}

export interface Invalidation extends IoctlResult {
  iommufd: number;
  /** The vIOMMU (SMMUv3) or HWPT (VT-d) the invalidation went to. */
  id: number;
  dataType: number;
  entryNum: number;
  doneNum: number;
}

export interface FailedOp {
  what: string;
  ret: number;
  errno?: string;
  errnoSource?: ErrnoSource;
  outcome: string;
  record: EventRecord;
}

/** SMMUv3 accel's own trace events. */
export interface SmmuDeviceEvent {
  op: 'set' | 'unset';
  devfn: number;
  devId: number;
  record: EventRecord;
}

export interface SmmuSte {
  vsid: number;
  /** install_ste: abort, bypass or translate. */
  type: string;
  hwptId: number;
  /** The role the model gave that HWPT, for cross-checking. */
  hwptRole?: HwptRole;
  record: EventRecord;
}

/**
 * `iommufd_cdev_fail_attach_existing_container`: QEMU could not use an
 * existing container (an attach refused with another errno than EINVAL, or an
 * HWPT allocation that failed there), and goes on to a new IOAS.
 */
export interface ContainerRetry {
  message: string;
  errno?: string;
  /** The failed allocation it reports, when the message is "Failed to allocate hwpt". */
  failedAlloc?: HwptAlloc;
  /** The refused attach it reports (attach refusals are not traced otherwise). */
  refusedAttach?: { name: string; targetId: number };
  record: EventRecord;
}

/** One line of QEMU's own output (stderr, a QMP error) the model read. */
export interface QemuMessage {
  text: string;
  source: string;
  /** 1-based line in what was given. */
  line: number;
  /** The trace event whose failure it reports, when it is one of QEMU's iommufd error messages. */
  event?: string;
  errno?: string;
  /** A realize check that fails after the HWPT was allocated (see REALIZE_ERRORS_AFTER_ALLOC). */
  realizeCheck?: string;
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
  /** The same for IOMMU_VIOMMU_ALLOC (kernel event `viommu_alloc`), when the kernel records have any. */
  viommu: { pairs: { request: Viommu; kernel: KernelRecord }[]; requestsWithoutAnswer: Viommu[]; answersWithoutRequest: KernelRecord[] };
}

/** What one vfio-pci device did, from its bind to its last detach. */
export interface DeviceStory {
  /** Undefined when the trace has no bind line for the device (cdev events off). */
  name?: string;
  devId: number;
  bind?: DeviceBind;
  allocs: HwptAlloc[];
  attaches: Attach[];
  detaches: Detach[];
  retries: ContainerRetry[];
  /** Objects allocated for this device: its IOAS(es) (allocated after its bind, before the next) and its HWPTs. */
  objects: IommufdObject[];
}

/**
 * QEMU's error messages that report an iommufd request's failure, with the
 * event they report: each is `error_setg_errno(errp, errno, TEXT)`, so the
 * strerror(3) text follows `TEXT: ` (read from backends/iommufd.c; the texts
 * are in the 11.1.3 binary's strings).
 */
const QEMU_ERROR_MESSAGES: readonly { re: RegExp; events: readonly string[] }[] = [
  { re: /Failed to allocate hwpt: ([^:]+)$/, events: ['iommufd_backend_alloc_hwpt'] },
  { re: /IOMMU_VIOMMU_ALLOC failed: ([^:]+)$/, events: ['iommufd_backend_alloc_viommu'] },
  { re: /IOMMU_VDEVICE_ALLOC failed: ([^:]+)$/, events: ['iommufd_backend_alloc_vdev'] },
  { re: /IOMMU_VEVENTQ_ALLOC failed: ([^:]+)$/, events: ['iommufd_viommu_alloc_eventq', 'iommufd_backend_alloc_veventq'] },
  { re: /IOMMU_HW_QUEUE_ALLOC failed: ([^:]+)$/, events: ['iommufd_backend_alloc_hw_queue'] },
  { re: /Failed to free id: \d+ (.+)$/, events: ['iommufd_backend_free_id'] },
  { re: /IOMMU_IOAS_MAP failed: (.+), PCI BAR\?/, events: ['iommufd_backend_map_dma'] },
  { re: /IOMMU_IOAS_MAP_FILE failed: (.+), PCI BAR\?/, events: ['iommufd_backend_map_file_dma'] },
];

/**
 * Realize checks that run after vfio_device_attach, i.e. after the HWPT was
 * allocated and attached (pci_device_set_iommu_device → the vIOMMU's
 * set_iommu_device): a realize failing there detaches the device and frees
 * its HWPT and IOAS. Texts from the 11.1.3 binary's strings.
 */
export const REALIZE_ERRORS_AFTER_ALLOC: readonly { check: string; re: RegExp }[] = [
  { check: 'bridge', re: /Host device downstream to a PCI bridge is unsupported when (?:x-)?f[ls]ts=on/ },
  { check: 'caching-mode', re: /Device assignment is not allowed without enabling caching-mode=on for Intel IOMMU/ },
  { check: 'aw-bits', re: /aw-bits \d+ > host aw-bits \d+/ },
  { check: 'pasid-bits', re: /PASID bits size \d+ > host IOMMU PASID bits size \d+/ },
  { check: 'host-type', re: /Incompatible host platform IOMMU type \d+/ },
  { check: 'fs1gp', re: /First stage 1GB large page is unsupported by host IOMMU/ },
  { check: 'smmu-hw-compatible', re: /Host SMMUv3 [^:]*(?:not compatible|doesn't support|supports only)/ },
  // vfio_pci_realize prefixes every set_iommu_device error with this: the catch-all, last.
  { check: 'set-iommu-device', re: /Failed to set vIOMMU: / },
];

const SOURCE_RANK: Record<ErrnoSource, number> = { trace: 0, kernel: 1, 'qemu-trace-message': 2, 'qemu-message': 3 };

const SOURCE_WORDS: Record<ErrnoSource, string> = {
  trace: 'the trace',
  kernel: "the kernel's answer",
  'qemu-trace-message': "QEMU's message in the trace",
  'qemu-message': "QEMU's message",
};

/** A strerror(3) text → its errno name, also when more text follows it. */
function errnoOfText(text: string): string | undefined {
  const exact = errnoFromText(text);
  if (exact) return exact;
  const t = text.trim();
  for (const [msg, name] of Object.entries(ERRNO_TEXT)) if (t.startsWith(msg)) return name;
  return undefined;
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
  // Two formats exist: 11.1.3's " iommufd dev_id type hwpt_id data_ptr data_len viommu_id (ret)" and
  // upstream's " iommufd type dev_id hwpt_id viommu_id (ret)": fields are read by name, data_len is optional.
  iommufd_backend_alloc_viommu: (m, r) => {
    const v: Viommu = {
      ...m.result(r), iommufd: num(r, 'iommufd'), devId: num(r, 'dev_id'), type: num(r, 'type'), typeName: viommuTypeName(num(r, 'type')),
      hwptId: num(r, 'hwpt_id'), id: num(r, 'viommu_id'),
    };
    const dataLen = optNum(r, 'data_len');
    if (dataLen !== undefined) v.dataLen = dataLen;
    m.track(v);
    m.viommus.push(v);
    if (v.ok) m.allocate('viommu', v.iommufd, v.id, r);
  },
  iommufd_backend_alloc_vdev: (m, r) => {
    const virt = r.fields.virt_id;
    const v: Vdevice = {
      ...m.result(r), iommufd: num(r, 'iommufd'), devId: num(r, 'dev_id'), viommuId: num(r, 'viommu_id'),
      virtId: typeof virt === 'bigint' ? virt : num(r, 'virt_id'), id: num(r, 'vdev_id'),
    };
    m.track(v);
    m.vdevices.push(v);
    if (v.ok) m.allocate('vdevice', v.iommufd, v.id, r);
  },
  iommufd_viommu_alloc_eventq: (m, r) => m.addEventq(r),
  iommufd_backend_alloc_veventq: (m, r) => m.addEventq(r),
  iommufd_backend_alloc_hw_queue: (m, r) => {
    const q = m.track(m.result(r));
    if (q.ok) m.allocate('hw_queue', num(r, 'iommufd'), num(r, 'queue_id'), r);
  },
  iommufd_backend_set_dirty: (m, r) => {
    const d: DirtySet = { ...m.result(r), iommufd: num(r, 'iommufd'), hwptId: num(r, 'hwpt', 'hwpt_id'), enable: num(r, 'enable', 'start') !== 0 };
    m.track(d);
    m.dirty.push(d);
  },
  iommufd_backend_get_dirty_bitmap: (m, r) => {
    m.dirtyReads.push(m.track(m.result(r)));
  },
  iommufd_backend_invalidate_cache: (m, r) => {
    const i: Invalidation = {
      ...m.result(r), iommufd: num(r, 'iommufd'), id: num(r, 'id', 'hwpt_id'), dataType: num(r, 'data_type'),
      entryNum: num(r, 'entry_num'), doneNum: num(r, 'done_num'),
    };
    m.track(i);
    m.invalidations.push(i);
  },
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
  iommufd_cdev_fail_attach_existing_container: (m, r) => m.addRetry(r),
  vtd_device_attach_hwpt: (m, r) => m.addVtd('attach', r),
  vtd_device_detach_hwpt: (m, r) => m.addVtd('detach', r),
  vtd_device_reattach_def_hwpt: (m, r) => m.addVtd('reattach', r),
  smmuv3_accel_set_iommu_device: (m, r) => m.smmuDevices.push({ op: 'set', devfn: num(r, 'devfn'), devId: num(r, 'devid'), record: r }),
  smmuv3_accel_unset_iommu_device: (m, r) => m.smmuDevices.push({ op: 'unset', devfn: num(r, 'devfn'), devId: num(r, 'devid'), record: r }),
  smmuv3_accel_install_ste: (m, r) => m.addSte(r),
  vfio_pci_synthesize_pasid_cap: (m, r) => m.pasidCaps.push({ name: str(r, 'name'), offset: num(r, 'offset'), record: r }),
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
  readonly veventqs: Veventq[] = [];
  readonly frees: EventRecord[] = [];
  /** Successful frees of ids the model never saw allocated (tracing began later, or a bug). */
  readonly unmatchedFrees: EventRecord[] = [];
  readonly dirty: DirtySet[] = [];
  readonly dirtyReads: IoctlResult[] = [];
  readonly invalidations: Invalidation[] = [];
  readonly maps: MapCounts = { map: 0, mapFailed: 0, unmap: 0, unmapFailed: 0, byIoas: new Map() };
  readonly retries: ContainerRetry[] = [];
  readonly smmuDevices: SmmuDeviceEvent[] = [];
  readonly smmuSte: SmmuSte[] = [];
  /** vfio_pci_synthesize_pasid_cap: the PASID capabilities vfio-pci synthesized for the guest. */
  readonly pasidCaps: { name: string; offset: number; record: EventRecord }[] = [];
  readonly qemuMessages: QemuMessage[] = [];
  readonly kernel: KernelRecord[] = [];
  /** Every record the model used, in order: the source of trace excerpts. */
  readonly used: EventRecord[] = [];
  /** Lines that did not parse: kept out of the model, shown in messages. */
  readonly diagnostics: Diagnostic[] = [];
  /** Inconsistencies, e.g. an id allocated twice without a free between. */
  readonly anomalies: string[] = [];
  private readonly live = new Map<string, IommufdObject>();
  /** Every traced request with a `ret`, in order (failures() and the errno joins read it). */
  private readonly results: IoctlResult[] = [];
  private readonly roles = new Map<IommufdObject, HwptRole>();
  /** QEMU messages naming an errno whose failed request the trace has not shown yet. */
  private readonly pendingMessages: { msg: QemuMessage; events: readonly string[] }[] = [];
  private readonly explainedBy = new Map<IoctlResult, QemuMessage>();
  /** HWPT allocations made so far on each vIOMMU object (abort, bypass, then nested). */
  private readonly onViommu = new Map<IommufdObject, number>();

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
    // QEMU's own messages in the same file (trace on stderr): they carry the errnos.
    if (r.kind === 'raw' && r.reason === 'foreign') this.addQemuMessages(r.raw, 'trace file', r.line);
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

  /**
   * QEMU's own output (stderr, or a QMP error's desc): its iommufd error
   * messages name the errno the trace's raw -1 lacks. Each message goes to
   * the earliest failed request of its event that no message explained yet
   * (QEMU reports each failure once, in order; a failure already explained by
   * a message inside the trace is skipped). Realize errors are kept too.
   */
  addQemuMessages(text: string, source = 'stderr', firstLine = 1): QemuMessage[] {
    const added: QemuMessage[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/\r$/, '');
      if (line.trim() === '') return;
      const msg: QemuMessage = { text: line, source, line: i + firstLine };
      for (const q of QEMU_ERROR_MESSAGES) {
        const m = q.re.exec(line);
        if (!m) continue;
        msg.event = q.events[0]!;
        const errno = errnoOfText(m[1]!);
        if (errno) {
          msg.errno = errno;
          // Messages given before the trace is read wait for their failure (see track).
          const target = this.results.find((x) => this.awaitsMessage(x, q.events));
          if (target) this.explain(target, msg);
          else this.pendingMessages.push({ msg, events: q.events });
        }
        break;
      }
      const check = REALIZE_ERRORS_AFTER_ALLOC.find((c) => c.re.test(line));
      if (check) msg.realizeCheck = check.check;
      this.qemuMessages.push(msg);
      added.push(msg);
    });
    return added;
  }

  /** A failed request of one of `events` that no QEMU message explained yet. */
  private awaitsMessage(x: IoctlResult, events: readonly string[]): boolean {
    return events.includes(x.record.event) && !x.ok && !x.errnoEvidence.some((e) => e.source === 'qemu-message' || e.source === 'qemu-trace-message');
  }

  private explain(target: IoctlResult, msg: QemuMessage): void {
    this.explainedBy.set(target, msg);
    this.addEvidence(target, { errno: msg.errno!, source: 'qemu-message', evidence: `${msg.source} line ${msg.line}: ${msg.text}` });
  }

  isLive(key: string): boolean {
    return this.live.has(key);
  }

  /** @internal the outcome of a record's ret, before any errno source is joined */
  result(r: EventRecord): IoctlResult {
    const ret = num(r, 'ret');
    const o = retOutcome(r.event, ret) ?? { ok: ret === 0, text: ret === 0 ? 'OK' : `failed (ret ${ret})` };
    const res: IoctlResult = { ret, ok: o.ok, errnoEvidence: [], outcome: o.text, record: r };
    if (o.errno) {
      res.errno = o.errno;
      res.errnoSource = 'trace';
      res.errnoEvidence.push({ errno: o.errno, source: 'trace', evidence: `L${r.line}: ${r.raw}` });
    }
    return res;
  }

  /** @internal registers a result for failures() and the errno joins */
  track<T extends IoctlResult>(res: T): T {
    this.results.push(res);
    if (!res.ok) {
      const i = this.pendingMessages.findIndex((p) => this.awaitsMessage(res, p.events));
      if (i >= 0) this.explain(res, this.pendingMessages.splice(i, 1)[0]!.msg);
    }
    return res;
  }

  private addEvidence(res: IoctlResult, e: ErrnoEvidence): void {
    if (res.errnoEvidence.some((x) => x.source === e.source && x.evidence === e.evidence)) return;
    const other = res.errnoEvidence.find((x) => x.errno !== e.errno);
    if (other) {
      this.anomalies.push(`line ${res.record.line}: ${SOURCE_WORDS[e.source]} says ${e.errno}, ${SOURCE_WORDS[other.source]} says ${other.errno}`);
    }
    res.errnoEvidence.push(e);
    res.errnoEvidence.sort((a, b) => SOURCE_RANK[a.source] - SOURCE_RANK[b.source]);
    const best = res.errnoEvidence[0]!;
    res.errno = best.errno;
    res.errnoSource = best.source;
    res.outcome = `${best.errno} (from ${SOURCE_WORDS[best.source]}: ${best.evidence.split('\n')[0]})`;
  }

  private removeEvidence(res: IoctlResult, source: ErrnoSource): void {
    const keep = res.errnoEvidence.filter((e) => e.source !== source);
    if (keep.length === res.errnoEvidence.length) return;
    res.errnoEvidence.length = 0;
    delete res.errno;
    delete res.errnoSource;
    const o = retOutcome(res.record.event, res.ret);
    res.outcome = o?.text ?? `failed (ret ${res.ret})`;
    for (const e of keep) this.addEvidence(res, e);
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
    const res = this.track(this.result(r));
    if (!res.ok) return;
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
    const h: HwptAlloc = {
      ...this.result(r), iommufd, devId: num(r, 'dev_id'), ptId, flags, flagNames: hwptFlagNames(flags), hwptType,
      hwptTypeName: hwptDataTypeName(hwptType), len: num(r, 'len', 'data_len'), id: num(r, 'out_hwpt', 'out_hwpt_id'),
    };
    const pt = this.live.get(IommufdModel.key(iommufd, ptId));
    if (pt) h.ptKind = pt.kind;
    const role = this.roleOf(pt, hwptType);
    if (role) h.role = role;
    if (h.ok) {
      h.object = this.allocate('hwpt', iommufd, h.id, r);
      if (role) this.roles.set(h.object, role);
    }
    this.track(h);
    this.hwptAllocs.push(h);
  }

  private roleOf(pt: IommufdObject | undefined, hwptType: number): HwptRole | undefined {
    if (pt?.kind === 'ioas') return 'parent';
    if (pt?.kind === 'hwpt') return 'nested';
    if (pt?.kind === 'viommu') {
      const n = this.onViommu.get(pt) ?? 0;
      this.onViommu.set(pt, n + 1);
      return n === 0 ? 'abort' : n === 1 ? 'bypass' : 'nested';
    }
    // pt_id never seen allocated (tracing began later): only the data type can tell.
    if (pt === undefined && hwptType === 0) return 'parent';
    if (pt === undefined && hwptType === 1) return 'nested';
    return undefined;
  }

  /** The role of a live HWPT by id. */
  hwptRole(iommufd: number, id: number): HwptRole | undefined {
    const o = this.live.get(IommufdModel.key(iommufd, id));
    return o ? this.roles.get(o) : undefined;
  }

  /** @internal */
  addEventq(r: EventRecord): void {
    const q: Veventq = { ...this.result(r), iommufd: num(r, 'iommufd'), viommuId: num(r, 'viommu_id'), type: num(r, 'type'), id: num(r, 'veventq_id') };
    this.track(q);
    this.veventqs.push(q);
    if (q.ok) this.allocate('veventq', q.iommufd, q.id, r);
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
    const role = target ? this.roles.get(target) : undefined;
    if (role) a.targetRole = role;
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
    const v: VtdHwptOp = { ...this.result(r), op, devId: num(r, 'dev_id'), pasid: num(r, 'pasid') };
    const hwptId = optNum(r, 'hwpt_id');
    if (hwptId !== undefined) v.hwptId = hwptId;
    this.track(v);
    this.vtd.push(v);
  }

  /** @internal */
  addRetry(r: EventRecord): void {
    const message = str(r, 'msg', 'arg0');
    const retry: ContainerRetry = { message, record: r };
    const errno = /: ([^:]+)$/.exec(message)?.[1];
    const name = errno ? errnoOfText(errno) : undefined;
    if (name) retry.errno = name;
    if (/Failed to allocate hwpt/.test(message)) {
      // The failed request is the latest one before this line that nothing explained yet.
      const failed = [...this.hwptAllocs].reverse().find((h) => !h.ok && !this.retries.some((x) => x.failedAlloc === h));
      if (failed) {
        retry.failedAlloc = failed;
        if (name) {
          // A stderr message given this failure belongs to a later one: QEMU swallowed this one into the trace.
          const msg = this.explainedBy.get(failed);
          if (msg) {
            this.explainedBy.delete(failed);
            this.removeEvidence(failed, 'qemu-message');
            const later = this.results.find((x) => x !== failed && x.record.line > failed.record.line && this.awaitsMessage(x, [failed.record.event]));
            if (later) this.explain(later, msg);
            else this.pendingMessages.unshift({ msg, events: [failed.record.event] });
          }
          this.addEvidence(failed, { errno: name, source: 'qemu-trace-message', evidence: `L${r.line}: ${r.raw}` });
        }
      }
    }
    const attach = /error attach (\S+) \(\d+\)(?: pasid \d+)? to id=(\d+)/.exec(message);
    if (attach) retry.refusedAttach = { name: attach[1]!, targetId: Number(attach[2]) };
    this.retries.push(retry);
  }

  /** @internal */
  addSte(r: EventRecord): void {
    const s: SmmuSte = { vsid: num(r, 'vSID', 'vsid'), type: str(r, 'type'), hwptId: num(r, 'hwpt_id'), record: r };
    // install_ste names no iommufd; the vIOMMU's HWPTs share the device's fd, the only one with a vIOMMU.
    const hwpt = this.objects.filter((o) => o.kind === 'hwpt' && o.id === s.hwptId && !o.freed).pop();
    const role = hwpt ? this.roles.get(hwpt) : undefined;
    if (role) s.hwptRole = role;
    const want: Record<string, HwptRole> = { abort: 'abort', bypass: 'bypass', translate: 'nested' };
    if (role && want[s.type] && want[s.type] !== role) {
      this.anomalies.push(`line ${r.line}: install_ste type=${s.type} hwpt_id=0x${s.hwptId.toString(16)}, but the model has that HWPT as ${role}`);
    }
    this.smmuSte.push(s);
  }

  /** @internal */
  countMap(r: EventRecord, op: 'map' | 'unmap'): void {
    const ok = this.track(this.result(r)).ok;
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

  /** Every request that failed, with its errno and the errno's source where one is known. */
  failures(): FailedOp[] {
    return this.results
      .filter((r) => !r.ok)
      .map((r) => {
        const f: FailedOp = { what: r.record.event, ret: r.ret, outcome: r.outcome, record: r.record };
        if (r.errno) f.errno = r.errno;
        if (r.errnoSource) f.errnoSource = r.errnoSource;
        return f;
      });
  }

  failedHwptAllocs(): HwptAlloc[] {
    return this.hwptAllocs.filter((h) => !h.ok);
  }

  /**
   * What device `nameOrDevId` did in the trace, from its (last) bind: its HWPT
   * requests, attaches, detaches, container retries, and the objects allocated
   * for it (the IOASes allocated between its bind and the next device's, its HWPTs).
   */
  deviceStory(nameOrDevId: string | number): DeviceStory | undefined {
    const bindIdx = this.binds.map((b, i) => [b, i] as const).filter(([b]) => b.name === nameOrDevId || b.devId === nameOrDevId).pop();
    if (!bindIdx) {
      // A trace without the cdev lines (only iommufd_backend_* enabled): the story is the whole trace.
      if (typeof nameOrDevId !== 'number' || !this.hwptAllocs.some((h) => h.devId === nameOrDevId)) return undefined;
      const allocs = this.hwptAllocs.filter((h) => h.devId === nameOrDevId);
      return {
        devId: nameOrDevId, allocs, attaches: [], detaches: [], retries: [...this.retries],
        objects: this.objects.filter((o) => o.kind === 'ioas' || allocs.some((h) => h.object === o)),
      };
    }
    const [bind, i] = bindIdx;
    const from = bind.record.line;
    const nextBind = this.binds[i + 1]?.record.line ?? Infinity;
    // The same devid may come back after an unplug: the story ends at the next bind of the same name.
    const end = this.binds.slice(i + 1).find((b) => b.name === bind.name)?.record.line ?? Infinity;
    const inStory = (line: number) => line > from && line < end;
    const allocs = this.hwptAllocs.filter((h) => h.devId === bind.devId && inStory(h.record.line));
    const objects = this.objects.filter(
      (o) => inStory(o.record.line) && ((o.kind === 'ioas' && o.record.line < nextBind) || allocs.some((h) => h.object === o)),
    );
    return {
      name: bind.name,
      devId: bind.devId,
      bind,
      allocs,
      attaches: this.attaches.filter((a) => a.name === bind.name && inStory(a.record.line)),
      detaches: this.detaches.filter((d) => d.name === bind.name && inStory(d.record.line)),
      retries: this.retries.filter((x) => inStory(x.record.line) && x.record.line < nextBind),
      objects,
    };
  }

  /**
   * Pairs each HWPT request with the kernel's `hwpt_alloc` answer having the
   * same dev_id, pt_id and flags, first-come first-joined; sets `request.kernel`
   * and, for a refusal, the request's errno (source `kernel`). vIOMMU requests
   * are joined to `viommu_alloc` answers the same way (dev_id, hwpt_id, type).
   */
  joinKernel(): KernelJoin {
    const hwpt = this.joinAnswers(
      this.hwptAllocs,
      'hwpt_alloc',
      (req, a) => a.fields.dev_id === req.devId && a.fields.pt_id === req.ptId && a.fields.flags === req.flags,
    );
    const viommu = this.joinAnswers(
      this.viommus,
      'viommu_alloc',
      (req, a) => a.fields.dev_id === req.devId && a.fields.hwpt_id === req.hwptId && (a.fields.type === undefined || a.fields.type === req.type),
    );
    return { ...hwpt, viommu };
  }

  private joinAnswers<T extends IoctlResult & { kernel?: KernelRecord }>(
    requests: readonly T[],
    event: string,
    same: (req: T, answer: KernelRecord) => boolean,
  ): { pairs: { request: T; kernel: KernelRecord }[]; requestsWithoutAnswer: T[]; answersWithoutRequest: KernelRecord[] } {
    const answers = this.kernel.filter((k) => k.event === event);
    const taken = new Set<KernelRecord>();
    const pairs: { request: T; kernel: KernelRecord }[] = [];
    const requestsWithoutAnswer: T[] = [];
    for (const req of requests) {
      this.removeEvidence(req, 'kernel');
      const k = answers.find((a) => !taken.has(a) && same(req, a));
      if (k) {
        taken.add(k);
        req.kernel = k;
        pairs.push({ request: req, kernel: k });
        const ret = k.fields.ret;
        if (typeof ret === 'number' && ret < 0 && !req.ok) {
          this.addEvidence(req, { errno: errnoName(ret), source: 'kernel', evidence: `${k.source} line ${k.line}: ret=${ret}` });
        } else if (typeof ret === 'number' && (ret === 0) !== req.ok) {
          this.anomalies.push(`line ${req.record.line}: QEMU traced ${req.ok ? 'success' : 'a failure'}, the kernel answered ret=${ret} (${k.source} line ${k.line})`);
        }
      } else {
        delete req.kernel;
        requestsWithoutAnswer.push(req);
      }
    }
    return { pairs, requestsWithoutAnswer, answersWithoutRequest: answers.filter((a) => !taken.has(a)) };
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
