import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelRecord } from './model.js';

/**
 * The kernel's side of an HWPT allocation, read through tracefs kprobes (no
 * iommufd tracepoints exist). Entry probes read `struct iommu_hwpt_alloc` via
 * the `cmd` pointer of `struct iommufd_ucmd`; return probes give the answer.
 * The vendor allocator (VT-d, SMMUv3) is probed too, when its symbol exists,
 * so a refusal can be pinned on the IOMMU driver rather than iommufd's checks.
 *
 * Argument layout (x86_64, Linux 7.2): iommufd_hwpt_alloc(ucmd) in %di,
 * ucmd->cmd at +24, and in iommu_hwpt_alloc flags +4, dev_id +8, pt_id +12,
 * data_type +24. Another kernel may move them: the join with QEMU's own trace
 * (same dev_id, pt_id, flags) is the check, and a mismatch shows up as
 * requests without answers rather than as wrong answers.
 */
export interface ProbeLayout {
  ucmdCmdOffset: number;
}

export const LINUX_7_2_X86_64: ProbeLayout = { ucmdCmdOffset: 24 };

/** Vendor allocators: symbol → register holding the flags (2nd argument on x86_64). */
const VENDOR_ALLOCATORS: Record<string, string> = {
  intel_iommu_domain_alloc_paging_flags: 'vtd_alloc',
  arm_smmu_domain_alloc_paging_flags: 'smmu_alloc',
};

export function probeDefinitions(group: string, layout: ProbeLayout, available: (symbol: string) => boolean): string[] {
  const c = layout.ucmdCmdOffset;
  const defs = [
    `p:${group}/hwpt_alloc iommufd_hwpt_alloc flags=+4(+${c}(%di)):x32 dev_id=+8(+${c}(%di)):u32 pt_id=+12(+${c}(%di)):u32 data_type=+24(+${c}(%di)):u32`,
    `r:${group}/hwpt_alloc_ret iommufd_hwpt_alloc ret=$retval:s32`,
  ];
  for (const [sym, name] of Object.entries(VENDOR_ALLOCATORS)) {
    if (!available(sym)) continue;
    defs.push(`p:${group}/${name} ${sym} flags=%si:x32`, `r:${group}/${name}_ret ${sym} ret=$retval:s64`);
  }
  return defs;
}

// " ld-linux-x86-64-122     [001] .....     3.563897: hwpt_alloc: (iommufd_hwpt_alloc+0x0/0x760) flags=0x0 dev_id=1 ..."
const LINE = /^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+\.\d+):\s+(\w+):\s+\(([^)]*)\)\s*(.*)$/;

/**
 * tracefs text → kernel records. Entry and return lines are paired per task:
 * `hwpt_alloc` gets `ret` from the following `hwpt_alloc_ret` of the same pid,
 * and `vendor` from the vendor allocator called in between (its errno, or 0 for
 * a domain pointer). Lines that are not ours are ignored; probe lines that do
 * not parse are kept as records of event "unparsed" so nothing vanishes.
 */
export function parseKprobeTrace(text: string, source = 'tracefs'): KernelRecord[] {
  const out: KernelRecord[] = [];
  const open = new Map<string, KernelRecord>(); // pid → hwpt_alloc awaiting its return
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
    const rec: KernelRecord = { kind: 'kernel', event, fields, line: i + 1, raw, time: ts, source: `${source}:${event}` };
    if (event === 'hwpt_alloc') {
      open.set(pid, rec);
      out.push(rec);
    } else if (event === 'hwpt_alloc_ret') {
      const entry = open.get(pid);
      if (entry) {
        entry.fields.ret = fields.ret as number;
        entry.raw += `\n${raw}`;
        open.delete(pid);
      } else out.push(rec);
    } else if (event.endsWith('_alloc_ret')) {
      const entry = open.get(pid);
      const ret = Number(fields.ret);
      // A domain pointer on success, ERR_PTR(-errno) on failure.
      const errno = ret < 0 && ret >= -4095 ? ret : 0;
      if (entry) {
        entry.fields.vendor = event.slice(0, -'_ret'.length);
        entry.fields.vendor_ret = errno;
        entry.raw += `\n${raw}`;
      } else out.push({ ...rec, fields: { ...fields, ret: errno } });
    } else if (event.endsWith('_alloc')) {
      const entry = open.get(pid);
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
  layout?: ProbeLayout;
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
    readonly definitions: string[],
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
    const group = `harness_${process.pid}`;
    const defs = probeDefinitions(group, opts.layout ?? LINUX_7_2_X86_64, available);
    const instance = join(tracefs, 'instances', group);
    mkdirSync(instance);
    const s = new KprobeSession(tracefs, group, instance, defs);
    try {
      for (const d of defs) appendFileSync(join(tracefs, 'kprobe_events'), d + '\n');
      writeFileSync(join(instance, 'events', group, 'enable'), '1');
    } catch (e) {
      s.stop();
      throw new Error(`cannot set kprobes in ${tracefs}: ${(e as Error).message}`);
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
        appendFileSync(join(this.tracefs, 'kprobe_events'), `-:${d.split(' ')[0]!.slice(2)}\n`);
      } catch {
        /* already removed */
      }
    }
  }
}
