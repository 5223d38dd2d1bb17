/**
 * The lab-machine checklist: what a host needs before the lab suites can
 * judge QEMU on it (kernel options, modules, permissions), each item checked
 * on this host and printed by `harness doctor --checklist`, with what to do
 * when it is not met. docs/ci/lab-machine.md lists the same items (a unit
 * test keeps the two alike), so a person setting a machine up and the doctor
 * read one list.
 *
 * An item that cannot be read (no kernel config anywhere) is "unknown", never
 * "ok": the checklist may not pass a host it could not see.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { readText, REAL_HOST, type HostPaths } from './sysfs.js';

export type ChecklistArch = 'x86_64' | 'aarch64';
export type ChecklistState = 'ok' | 'missing' | 'unknown';

export interface ChecklistItem {
  id: string;
  group: 'kernel option' | 'kernel command line' | 'module' | 'permission';
  /** What is wanted, as a person would set it. */
  want: string;
  /** Which tests need it. */
  why: string;
  /** What to do when it is not met. */
  fix: string;
}

export interface ChecklistResult extends ChecklistItem {
  state: ChecklistState;
  /** What was seen, and where. */
  seen: string;
}

export interface ChecklistOptions {
  paths?: HostPaths;
  /** Folder of config-<release> files (default /boot, or <root>/boot beside fake sys/dev/proc). */
  boot?: string;
  arch?: ChecklistArch;
  uid?: number;
}

const opt = (
  name: string,
  want: string,
  why: string,
  fix = `rebuild the kernel with ${name}=${want.includes('m') ? 'm (or y)' : 'y'}`,
): ChecklistItem & { option: string; allowed: string[] } => ({
  id: name,
  option: name,
  allowed: want.split('|'),
  group: 'kernel option',
  want: `${name}=${want}`,
  why,
  fix,
});

const IOMMU_OPTION: Record<ChecklistArch, ReturnType<typeof opt>> = {
  x86_64: opt('CONFIG_INTEL_IOMMU', 'y', 'the host VT-d the lab suites pass devices through'),
  aarch64: opt('CONFIG_ARM_SMMU_V3', 'y|m', 'the host SMMUv3 the lab suites pass devices through'),
};

function kernelOptions(arch: ChecklistArch): ReturnType<typeof opt>[] {
  return [
    opt('CONFIG_IOMMUFD', 'y|m', '/dev/iommu: every lab test allocates its HWPTs through iommufd'),
    opt('CONFIG_VFIO', 'y|m', 'VFIO passthrough of the profile devices'),
    opt('CONFIG_VFIO_DEVICE_CDEV', 'y', 'the vfio cdev (/dev/vfio/devices/vfioN) QEMU opens with iommufd'),
    opt('CONFIG_VFIO_PCI', 'y|m', 'vfio-pci, the driver the harness binds the profile devices to'),
    IOMMU_OPTION[arch],
    opt('CONFIG_PCI_PASID', 'y', 'the PASID scenarios (a PASID-capable device, IOMMU_HWPT_ALLOC_PASID)'),
    opt('CONFIG_KVM', 'y|m', 'KVM for L1 (TCG works, slower; the lab suites skip KVM-only checks)'),
    opt('CONFIG_KPROBES', 'y', "the kernel's answers read through tracefs kprobes"),
    opt('CONFIG_KPROBE_EVENTS', 'y', 'kprobe events in tracefs (kernel answers tests)'),
  ];
}

const MODULES: Record<ChecklistArch, string[]> = {
  x86_64: ['iommufd', 'vfio', 'vfio_pci', 'kvm'],
  aarch64: ['iommufd', 'vfio', 'vfio_pci', 'kvm', 'arm_smmu_v3'],
};

/** Guest RAM the lab's L2 pins, with room: iommufd charges pinned pages to RLIMIT_MEMLOCK unless the user has CAP_IPC_LOCK. */
const MEMLOCK_WANTED = 2 * 2 ** 30;

/** The kernel's build config as option → value, from /proc/config.gz or /boot/config-<release>. */
export function readKernelConfig(paths: HostPaths, boot: string): { options: Map<string, string>; source: string } | undefined {
  const release = readText(join(paths.proc, 'sys/kernel/osrelease'));
  const candidates: Array<[string, () => string]> = [
    [join(paths.proc, 'config.gz'), () => gunzipSync(readFileSync(join(paths.proc, 'config.gz'))).toString('utf8')],
    ...(release ? ([[join(boot, `config-${release}`), () => readFileSync(join(boot, `config-${release}`), 'utf8')]] as Array<[string, () => string]>) : []),
  ];
  for (const [source, read] of candidates) {
    let text: string;
    try {
      text = read();
    } catch {
      continue;
    }
    const options = new Map<string, string>();
    for (const line of text.split('\n')) {
      const m = /^(CONFIG_[A-Z0-9_]+)=(.*)$/.exec(line);
      if (m) options.set(m[1]!, m[2]!);
      const unset = /^# (CONFIG_[A-Z0-9_]+) is not set$/.exec(line);
      if (unset) options.set(unset[1]!, 'n');
    }
    return { options, source };
  }
  return undefined;
}

function accessible(path: string, mode: number): string | undefined {
  try {
    accessSync(path, mode);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
  }
}

/** "Max locked memory" soft limit in bytes from /proc/self/limits (Infinity for unlimited). */
export function memlockLimit(limitsText: string): number | undefined {
  const m = /^Max locked memory\s+(\S+)/m.exec(limitsText);
  if (!m) return undefined;
  return m[1] === 'unlimited' ? Infinity : Number(m[1]);
}

/** Every checklist item for `arch`, as data (for the docs test and --checklist --json). */
export function checklistItems(arch: ChecklistArch): ChecklistItem[] {
  return checkHostList({ arch, paths: { sys: '/nonexistent', dev: '/nonexistent', proc: '/nonexistent' }, boot: '/nonexistent' }).map(
    ({ state: _s, seen: _v, ...item }) => item,
  );
}

export function checkHostList(o: ChecklistOptions = {}): ChecklistResult[] {
  const paths = o.paths ?? REAL_HOST;
  const boot = o.boot ?? (paths.proc === REAL_HOST.proc ? '/boot' : join(paths.proc, '..', 'boot'));
  const arch: ChecklistArch = o.arch ?? (process.arch === 'arm64' ? 'aarch64' : 'x86_64');
  const uid = o.uid ?? process.getuid?.() ?? -1;
  const out: ChecklistResult[] = [];
  const config = readKernelConfig(paths, boot);
  const options = kernelOptions(arch);

  for (const { option, allowed, ...item } of options) {
    const v = config?.options.get(option);
    if (!config)
      out.push({ ...item, state: 'unknown', seen: `no kernel config to read (${join(paths.proc, 'config.gz')}, ${join(boot, 'config-<release>')})` });
    else if (v === undefined) out.push({ ...item, state: 'missing', seen: `absent from ${config.source}` });
    else out.push({ ...item, state: allowed.includes(v) ? 'ok' : 'missing', seen: `${option}=${v} in ${config.source}` });
  }

  const cmdline = readText(join(paths.proc, 'cmdline'));
  if (arch === 'x86_64') {
    const item: ChecklistItem = {
      id: 'intel_iommu=on',
      group: 'kernel command line',
      want: 'intel_iommu=on (or CONFIG_INTEL_IOMMU_DEFAULT_ON=y), and no iommu=off',
      why: 'VT-d translating DMA: with the IOMMU off there is no /sys/class/iommu entry and nothing to nest on',
      fix: 'add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, reboot',
    };
    const defaultOn = config?.options.get('CONFIG_INTEL_IOMMU_DEFAULT_ON') === 'y';
    const words = (cmdline ?? '').split(/\s+/);
    if (cmdline === undefined) out.push({ ...item, state: 'unknown', seen: `${join(paths.proc, 'cmdline')} unreadable` });
    else if (words.includes('intel_iommu=off') || words.includes('iommu=off'))
      out.push({ ...item, state: 'missing', seen: `the command line turns it off: ${cmdline}` });
    else if (words.includes('intel_iommu=on') || defaultOn)
      out.push({ ...item, state: 'ok', seen: words.includes('intel_iommu=on') ? 'intel_iommu=on on the command line' : 'CONFIG_INTEL_IOMMU_DEFAULT_ON=y' });
    else
      out.push({
        ...item,
        state: 'missing',
        seen: `neither intel_iommu=on on the command line nor CONFIG_INTEL_IOMMU_DEFAULT_ON=y${config ? '' : ' (kernel config unread)'}`,
      });
  }

  for (const mod of MODULES[arch]) {
    const item: ChecklistItem = {
      id: `module ${mod}`,
      group: 'module',
      want: `${mod} loaded or built in`,
      why: mod === 'kvm' ? 'KVM for L1' : `${mod.replace(/_/g, '-')} must be there before a test binds or opens anything`,
      fix: `modprobe ${mod} (and list it in /etc/modules-load.d/viommu-harness.conf)`,
    };
    const builtin = existsSync(join(paths.sys, 'module', mod)) && !existsSync(join(paths.sys, 'module', mod, 'initstate'));
    const loaded = readText(join(paths.sys, 'module', mod, 'initstate')) === 'live';
    if (loaded) out.push({ ...item, state: 'ok', seen: `loaded (${join(paths.sys, 'module', mod)})` });
    else if (builtin) out.push({ ...item, state: 'ok', seen: `built in (${join(paths.sys, 'module', mod)})` });
    else out.push({ ...item, state: 'missing', seen: `no ${join(paths.sys, 'module', mod)}` });
  }

  // `id` is the path on a real host (what a person reads); `path` is where it is read (below --root in tests).
  const perm = (id: string, path: string, why: string, fix: string, mode = constants.R_OK | constants.W_OK): void => {
    const problem = existsSync(path) ? accessible(path, mode) : 'absent';
    out.push({
      id,
      group: 'permission',
      want: `${id} ${mode & constants.W_OK ? 'readable and writable' : 'readable'} by the user running the harness`,
      why,
      fix,
      state: problem ? 'missing' : 'ok',
      seen: problem ? `${path}: ${problem}` : `${path} ok`,
    });
  };
  out.push({
    id: 'root',
    group: 'permission',
    want: 'the harness runs as root',
    why: 'binding devices (sysfs driver_override, unbind, drivers_probe), tracefs kprobes and config space past 64 bytes need root',
    fix: 'run the CI job as root, or on a runner whose user is root',
    state: uid === 0 ? 'ok' : 'missing',
    seen: `uid ${uid}`,
  });
  perm(
    '/dev/iommu',
    join(paths.dev, 'iommu'),
    'iommufd: QEMU and the iommufd-probe helper open it',
    'load iommufd; run as root (or a udev rule giving the CI user the device)',
  );
  perm(
    '/dev/vfio',
    join(paths.dev, 'vfio'),
    'the vfio device nodes of the bound devices',
    'load vfio and vfio_pci; run as root',
    constants.R_OK | constants.X_OK,
  );
  perm(
    '/dev/kvm',
    join(paths.dev, 'kvm'),
    'KVM for L1 (without it L1 runs under TCG, much slower)',
    'load kvm_intel/kvm_amd (or kvm on arm64); add the user to group kvm',
  );
  perm(
    '/sys/kernel/tracing/kprobe_events',
    join(paths.sys, 'kernel', 'tracing', 'kprobe_events'),
    'kernel answers tests set kprobes in a tracefs instance of their own',
    'mount tracefs on /sys/kernel/tracing (mount -t tracefs nodev /sys/kernel/tracing); run as root',
  );

  const limits = readText(join(paths.proc, 'self', 'limits'));
  const memlock = limits === undefined ? undefined : memlockLimit(limits);
  const memItem: ChecklistItem = {
    id: 'memlock',
    group: 'permission',
    want: `RLIMIT_MEMLOCK unlimited or at least ${MEMLOCK_WANTED / 2 ** 30} GiB, or root (CAP_IPC_LOCK)`,
    why: "iommufd pins the guest's RAM for DMA and charges it to the locked-memory limit",
    fix: 'ulimit -l unlimited in the job, LimitMEMLOCK=infinity in a systemd unit, or run as root',
  };
  if (uid === 0) out.push({ ...memItem, state: 'ok', seen: 'root (CAP_IPC_LOCK)' });
  else if (memlock === undefined) out.push({ ...memItem, state: 'unknown', seen: `no "Max locked memory" in ${join(paths.proc, 'self', 'limits')}` });
  else
    out.push({
      ...memItem,
      state: memlock >= MEMLOCK_WANTED ? 'ok' : 'missing',
      seen: `Max locked memory ${memlock === Infinity ? 'unlimited' : `${memlock} bytes`}`,
    });
  return out;
}

const MARK: Record<ChecklistState, string> = { ok: 'ok  ', missing: 'NO  ', unknown: '??  ' };

export function formatChecklist(results: ChecklistResult[]): string {
  const lines = ['lab-machine checklist (docs/ci/lab-machine.md):'];
  let group = '';
  for (const r of results) {
    if (r.group !== group) lines.push(`  ${(group = r.group)}${r.group.endsWith('line') ? '' : 's'}:`);
    lines.push(`    ${MARK[r.state]}${r.want}`, `          seen: ${r.seen}`);
    if (r.state !== 'ok') lines.push(`          needed for: ${r.why}`, `          fix: ${r.fix}`);
  }
  const ok = results.filter((r) => r.state === 'ok').length;
  lines.push(
    `  ${ok} of ${results.length} met${
      ok === results.length
        ? ''
        : `; not met: ${results
            .filter((r) => r.state !== 'ok')
            .map((r) => r.id)
            .join(', ')}`
    }`,
  );
  return `${lines.join('\n')}\n`;
}
