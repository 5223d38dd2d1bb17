import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelRecord } from './model.js';

/**
 * The kernel's side of iommufd allocations, read through tracefs kprobes (no
 * iommufd tracepoints exist).
 *
 * Arch-neutral and layout-free by construction: the request is read at the
 * entry of `iommufd_fops_ioctl(file, cmd, arg)` through the function-argument
 * fetchers `$arg2`/`$arg3` (x86_64 and arm64 alike) and user-memory
 * dereferences `+uOFF($arg3)` of the ioctl's own uAPI struct, whose offsets
 * are ABI and never move. Kernel-internal structs (whose layout does move
 * between kernels) are never read. Each entry probe carries a filter on its
 * ioctl number, so other iommufd ioctls (IOAS_MAP...) cost nothing. The answer
 * is the return value of the command's handler (`iommufd_hwpt_alloc`, ...),
 * paired with the entry per task. The vendor allocator (VT-d, SMMUv3) is
 * probed too, when its symbol exists, so a refusal can be pinned on the IOMMU
 * driver rather than on iommufd's own checks.
 *
 * Whether the probes read what they should is not assumed either: see
 * KprobeSession.selfCheck, which fires known requests and reads them back.
 */

/** _IO(IOMMUFD_TYPE=';', IOMMUFD_CMD_*) from include/uapi/linux/iommufd.h. */
export const IOMMUFD_IOCTL = {
  HWPT_ALLOC: 0x3b89,
  VIOMMU_ALLOC: 0x3b90,
  VDEVICE_ALLOC: 0x3b91,
} as const;

/**
 * One ioctl the probes follow: its entry event reads uAPI fields, its return
 * event reads the handler's result.
 */
interface IoctlProbe {
  event: string;
  cmd: number;
  /** Field name → byte offset and type in the uAPI struct. */
  fields: ReadonlyArray<readonly [name: string, offset: number, type: 'u32' | 'x32' | 'u64' | 'x64']>;
  handler: string;
}

export const IOCTL_PROBES: readonly IoctlProbe[] = [
  {
    // struct iommu_hwpt_alloc { size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type, data_len, data_uptr, ... }
    event: 'hwpt_alloc',
    cmd: IOMMUFD_IOCTL.HWPT_ALLOC,
    fields: [['flags', 4, 'x32'], ['dev_id', 8, 'u32'], ['pt_id', 12, 'u32'], ['data_type', 24, 'u32'], ['data_len', 28, 'u32']],
    handler: 'iommufd_hwpt_alloc',
  },
  {
    // struct iommu_viommu_alloc { size, flags, type, dev_id, hwpt_id, out_viommu_id, data_len, ... }
    event: 'viommu_alloc',
    cmd: IOMMUFD_IOCTL.VIOMMU_ALLOC,
    fields: [['type', 8, 'u32'], ['dev_id', 12, 'u32'], ['hwpt_id', 16, 'u32']],
    handler: 'iommufd_viommu_alloc_ioctl',
  },
  {
    // struct iommu_vdevice_alloc { size, viommu_id, dev_id, out_vdevice_id, virt_id (u64) }
    event: 'vdevice_alloc',
    cmd: IOMMUFD_IOCTL.VDEVICE_ALLOC,
    fields: [['viommu_id', 4, 'u32'], ['dev_id', 8, 'u32'], ['virt_id', 16, 'x64']],
    handler: 'iommufd_vdevice_alloc_ioctl',
  },
];

/** Vendor allocators: symbol → event name. The flags are the 2nd argument of each. */
export const VENDOR_ALLOCATORS: Readonly<Record<string, string>> = {
  intel_iommu_domain_alloc_paging_flags: 'vtd_alloc',
  arm_smmu_domain_alloc_paging_flags: 'smmu_alloc',
};

const ENTRY_EVENTS = new Set(IOCTL_PROBES.map((p) => p.event));
const VENDOR_EVENTS = new Set(Object.values(VENDOR_ALLOCATORS));

export interface ProbeDefinition {
  /** The line written to kprobe_events. */
  line: string;
  /** The event's filter, written to its instance's filter file. */
  filter?: string;
}

/**
 * The probe lines for `group`; `available(symbol)` says whether the kernel
 * has a function (kallsyms), so a command or vendor this kernel lacks is left
 * out instead of failing the whole set.
 */
export function probeDefinitions(group: string, available: (symbol: string) => boolean): ProbeDefinition[] {
  const defs: ProbeDefinition[] = [];
  for (const p of IOCTL_PROBES) {
    if (!available(p.handler)) continue;
    const args = p.fields.map(([name, off, type]) => `${name}=+u${off}($arg3):${type}`).join(' ');
    defs.push(
      { line: `p:${group}/${p.event} iommufd_fops_ioctl cmd=$arg2:x32 ${args}`, filter: `cmd == 0x${p.cmd.toString(16)}` },
      { line: `r:${group}/${p.event}_ret ${p.handler} ret=$retval:s32` },
    );
  }
  for (const [sym, name] of Object.entries(VENDOR_ALLOCATORS)) {
    if (!available(sym)) continue;
    defs.push({ line: `p:${group}/${name} ${sym} flags=$arg2:x32` }, { line: `r:${group}/${name}_ret ${sym} ret=$retval:s64` });
  }
  return defs;
}

// " ld-linux-x86-64-122     [001] .....     3.563897: hwpt_alloc: (iommufd_fops_ioctl+0x0/0x190) cmd=0x3b89 flags=0x0 dev_id=1 ..."
const LINE = /^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+\.\d+):\s+(\w+):\s+\(([^)]*)\)\s*(.*)$/;

/**
 * tracefs text → kernel records. Entry and return lines are paired per task:
 * `hwpt_alloc` (and the other ioctl entries) get `ret` from the following
 * `hwpt_alloc_ret` of the same pid, and `vendor` from the vendor allocator
 * called in between (its errno, or 0 for a domain pointer). Probe lines that
 * do not parse are kept as records of event "unparsed" so nothing vanishes.
 */
export function parseKprobeTrace(text: string, source = 'tracefs'): KernelRecord[] {
  const out: KernelRecord[] = [];
  const open = new Map<string, KernelRecord>(); // pid → an ioctl entry awaiting its return
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    if (raw.startsWith('#') || raw.trim() === '') return;
    const m = LINE.exec(raw);
    if (!m) {
      out.push({ kind: 'kernel', event: 'unparsed', fields: {}, line: i + 1, raw, source });
      return;
    }
    const [, task, pid, , ts, event, , args] = m as unknown as [string, string, string, string, string, string, string, string];
    const fields: KernelRecord['fields'] = { pid: Number(pid), task };
    for (const kv of args.split(/\s+/)) {
      const eq = kv.indexOf('=');
      if (eq <= 0) continue;
      const v = kv.slice(eq + 1);
      fields[kv.slice(0, eq)] = /^-?0x[0-9a-f]+$/i.test(v) ? Number.parseInt(v, 16) : /^-?\d+$/.test(v) ? Number(v) : v;
    }
    delete fields.cmd; // the filter already chose the ioctl; the event name says which
    const rec: KernelRecord = { kind: 'kernel', event, fields, line: i + 1, raw, time: ts, source: `${source}:${event}` };
    const entry = open.get(`${pid}`);
    if (ENTRY_EVENTS.has(event)) {
      open.set(pid, rec);
      out.push(rec);
    } else if (event.endsWith('_ret') && ENTRY_EVENTS.has(event.slice(0, -4))) {
      if (entry && entry.event === event.slice(0, -4)) {
        entry.fields.ret = fields.ret as number;
        entry.raw += `\n${raw}`;
        open.delete(pid);
      } else out.push(rec);
    } else if (event.endsWith('_ret') && VENDOR_EVENTS.has(event.slice(0, -4))) {
      const ret = Number(fields.ret);
      // A domain pointer on success, ERR_PTR(-errno) on failure.
      const errno = ret < 0 && ret >= -4095 ? ret : 0;
      if (entry) {
        entry.fields.vendor = event.slice(0, -4);
        entry.fields.vendor_ret = errno;
        entry.raw += `\n${raw}`;
      } else out.push({ ...rec, fields: { ...fields, ret: errno } });
    } else if (VENDOR_EVENTS.has(event)) {
      if (entry) {
        entry.fields.vendor_flags = fields.flags as number;
        entry.raw += `\n${raw}`;
      } else out.push(rec);
    } else out.push(rec);
  });
  return out;
}

export interface KprobeOptions {
  tracefs?: string;
  kallsyms?: string;
}

/** A request fired at the kernel to check the probes, and what the kernel answered it directly. */
export interface SelfCheckRequest {
  flags: number;
  devId: number;
  ptId: number;
  /** 0, or the negative errno the requester saw. */
  ret: number;
}

export interface SelfCheckResult {
  ok: boolean;
  /** What was compared, in words: shown in the doctor and in skip reasons. */
  detail: string;
}

/**
 * Compares requests made by a known task with the kprobe records they left:
 * each must appear, in order, with the same flags, dev_id and pt_id, and the
 * same answer. A mismatch means the probes read the wrong bytes (or pair the
 * wrong lines) on this kernel.
 */
export function compareSelfCheck(requests: readonly SelfCheckRequest[], records: readonly KernelRecord[], task: string): SelfCheckResult {
  const seen = records.filter((r) => r.event === 'hwpt_alloc' && String(r.fields.task).startsWith(task.slice(0, 15)));
  const show = (r: KernelRecord | undefined) =>
    r ? `flags=0x${Number(r.fields.flags).toString(16)} dev_id=${String(r.fields.dev_id)} pt_id=${String(r.fields.pt_id)} ret=${String(r.fields.ret)}` : 'nothing';
  const want = requests.map((q) => `flags=0x${q.flags.toString(16)} dev_id=${q.devId} pt_id=${q.ptId} ret=${q.ret}`);
  const got = requests.map((_, i) => show(seen[i]));
  const same = seen.length === requests.length && want.every((w, i) => w === got[i]);
  const unparsed = records.filter((r) => r.event === 'unparsed').length;
  return {
    ok: same,
    detail: same
      ? `kprobes read back ${requests.length} IOMMU_HWPT_ALLOC requests fired by ${task} exactly (${want.join('; ')})`
      : `kprobe self-check failed: ${task} asked IOMMU_HWPT_ALLOC ${want.join('; ')}, the probes recorded ${seen.length ? got.join('; ') : 'no request'}` +
        `${seen.length > requests.length ? ` and ${seen.length - requests.length} more` : ''}${unparsed ? ` (${unparsed} lines did not parse)` : ''}`,
  };
}

/**
 * Kprobes in a tracefs instance of our own, so the global trace buffer and
 * anyone else's probes are left alone; removed again by stop().
 */
export class KprobeSession {
  private constructor(
    private readonly tracefs: string,
    readonly group: string,
    private readonly instance: string,
    readonly definitions: ProbeDefinition[],
  ) {}

  /** Why kprobes cannot be used here, or undefined. */
  static unavailableReason(opts: KprobeOptions = {}): string | undefined {
    const tracefs = opts.tracefs ?? '/sys/kernel/tracing';
    if (process.getuid?.() !== 0) return 'kprobes need root';
    if (!existsSync(join(tracefs, 'kprobe_events'))) return `no ${tracefs}/kprobe_events (tracefs not mounted, or a kernel without KPROBE_EVENTS)`;
    return undefined;
  }

  static start(opts: KprobeOptions = {}): KprobeSession {
    const tracefs = opts.tracefs ?? '/sys/kernel/tracing';
    const why = KprobeSession.unavailableReason(opts);
    if (why) throw new Error(why);
    const kallsyms = readFileSync(opts.kallsyms ?? '/proc/kallsyms', 'utf8');
    const available = (sym: string) => new RegExp(`^[0-9a-f]+ [tT] ${sym}$`, 'm').test(kallsyms);
    if (!available('iommufd_fops_ioctl')) throw new Error('no iommufd_fops_ioctl in /proc/kallsyms (a kernel without IOMMUFD, or kallsyms hidden)');
    const group = `harness_${process.pid}`;
    const defs = probeDefinitions(group, available);
    if (!defs.some((d) => d.line.includes('/hwpt_alloc '))) throw new Error('no iommufd_hwpt_alloc in /proc/kallsyms: nothing to probe');
    const instance = join(tracefs, 'instances', group);
    mkdirSync(instance);
    const s = new KprobeSession(tracefs, group, instance, defs);
    let current = '';
    try {
      for (const d of defs) {
        current = d.line;
        appendFileSync(join(tracefs, 'kprobe_events'), d.line + '\n');
      }
      for (const d of defs) {
        if (!d.filter) continue;
        current = `${d.filter} (filter)`;
        writeFileSync(join(instance, 'events', group, eventName(d), 'filter'), d.filter);
      }
      current = 'enable';
      writeFileSync(join(instance, 'events', group, 'enable'), '1');
    } catch (e) {
      const log = tailOf(join(tracefs, 'error_log'));
      s.stop();
      throw new Error(`this kernel refused the kprobe ${JSON.stringify(current)}: ${(e as Error).message}${log ? `; tracefs error_log: ${log}` : ''}`);
    }
    return s;
  }

  /** Everything recorded since start (or the last clear). */
  read(): string {
    return readFileSync(join(this.instance, 'trace'), 'utf8');
  }

  collect(): KernelRecord[] {
    return parseKprobeTrace(this.read(), `tracefs:${this.group}`);
  }

  clear(): void {
    writeFileSync(join(this.instance, 'trace'), '');
  }

  stop(): void {
    try {
      writeFileSync(join(this.instance, 'events', this.group, 'enable'), '0');
    } catch {
      /* not enabled */
    }
    try {
      rmdirSync(this.instance);
    } catch {
      /* gone */
    }
    for (const d of this.definitions) {
      try {
        appendFileSync(join(this.tracefs, 'kprobe_events'), `-:${this.group}/${eventName(d)}\n`);
      } catch {
        /* already removed */
      }
    }
  }
}

function eventName(d: ProbeDefinition): string {
  return d.line.split(' ')[0]!.split('/')[1]!;
}

function tailOf(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-3).join(' | ');
  } catch {
    return '';
  }
}
