/**
 * Safe vfio-pci binding of the devices a host profile lists.
 *
 * Before anything is written, every requested device is checked: it is in
 * the profile, it exists, it has an IOMMU group whose other members are
 * listed too (or allowed, or bridges), no mounted filesystem or swap sits on
 * it, and no network interface on it is up. One refusal refuses the whole
 * request, so a run never holds half of what it asked for.
 *
 * Binding is driver_override + unbind + drivers_probe; giving back is the
 * reverse. A journal (JSON lines, written and synced before the first write
 * for each device) lets the next run give devices back after a hard kill:
 * every VfioBinder replays it before binding.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readlinkSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { sleep } from '../util/deadline.js';
import { runOwnsInterrupts } from '../util/interrupt.js';
import { ownerAlive, processStart } from '../util/owner.js';
import { cacheDir } from '../util/paths.js';
import { deviceInUse } from './in-use.js';
import { normalizeBdf, type HostProfile } from './profile.js';
import { hostPaths, listDir, listPciDevices, pciDevicePath, pciDriversDir, readPciDevice, type HostPaths } from './sysfs.js';
import { scaled } from '../util/timeouts.js';

/** How sysfs gets written: the kernel's files on a real host, a simulation in tests. */
export interface SysfsWriter {
  write(path: string, value: string): void;
}

export const kernelWriter: SysfsWriter = {
  write(path, value) {
    try {
      writeFileSync(path, value);
    } catch (e) {
      throw new Error(`writing ${JSON.stringify(value.trim())} to ${path}: ${(e as Error).message}`);
    }
  },
};

export interface BinderOptions {
  paths?: Partial<HostPaths>;
  writer?: SysfsWriter;
  /** Default $HARNESS_CACHE_DIR/vfio-journal.jsonl. */
  journal?: string;
  /** How long to wait for vfio-dev/vfioN after drivers_probe (default 5000 ms). */
  bindDeadlineMs?: number;
  log?: (line: string) => void;
}

export interface BoundDevice {
  bdf: string;
  /** /dev/vfio/devices/vfioN (below the dev root). */
  cdev: string;
  vfioDev: string;
  group: number;
  /** The driver to give it back to; null when it had none. */
  originalDriver: string | null;
  originalOverride: string | null;
  /** It was on vfio-pci before we came: we leave it there. */
  wasVfio: boolean;
}

export interface Refusal {
  bdf: string;
  reason: string;
}

export class BindRefused extends Error {
  override name = 'BindRefused';
  constructor(readonly refusals: Refusal[]) {
    super(`refusing to bind (nothing was bound):\n  ${refusals.map((r) => `${r.bdf}: ${r.reason}`).join('\n  ')}`);
  }
}

export interface RestoreResult {
  bdf: string;
  ok: boolean;
  /** What was done, or what went wrong. */
  detail: string;
}

type JournalEntry =
  | { op: 'bind'; bdf: string; originalDriver: string | null; originalOverride: string | null; pid: number; start?: string; time: string }
  | { op: 'restored'; bdf: string; pid: number; time: string };

/**
 * $HARNESS_VFIO_JOURNAL, else $HARNESS_CACHE_DIR/vfio-journal.jsonl. Inside the
 * virtual lab the cache is on a read-only share: point the variable at tmpfs
 * there (a binding does not outlive L1 either).
 */
export function defaultJournalPath(): string {
  return process.env.HARNESS_VFIO_JOURNAL || join(cacheDir(), 'vfio-journal.jsonl');
}

/** Near misses for a BDF typo: existing addresses that differ in one character. */
function nearMisses(p: HostPaths, bdf: string): string[] {
  return listPciDevices(p).filter((d) => d.length === bdf.length && [...d].filter((c, i) => c !== bdf[i]).length === 1);
}

/**
 * Every reason not to bind these devices; [] when all of them may be bound.
 * Reads only.
 */
export function checkBindable(profile: HostProfile, bdfs: string[], paths: Partial<HostPaths> = {}): Refusal[] {
  const p = hostPaths(paths);
  const refusals: Refusal[] = [];
  const listed = new Set(profile.devices.map((d) => d.bdf));
  const peersOk = new Set(profile.allowGroupPeers);
  if (!existsSync(join(pciDriversDir(p), 'vfio-pci')))
    refusals.push({ bdf: '*', reason: `the vfio-pci driver is not loaded (no ${join(pciDriversDir(p), 'vfio-pci')}; modprobe vfio-pci)` });
  for (const raw of bdfs) {
    const bdf = normalizeBdf(raw);
    if (!bdf) {
      refusals.push({ bdf: raw, reason: `${JSON.stringify(raw)} is not a PCI address (DDDD:BB:DD.F)` });
      continue;
    }
    if (!listed.has(bdf)) {
      refusals.push({ bdf, reason: `not in profile ${profile.name}'s devices (${profile.source}); only listed devices are ever bound` });
      continue;
    }
    const dev = readPciDevice(p, bdf);
    if (!dev) {
      const near = nearMisses(p, bdf);
      refusals.push({
        bdf,
        reason: `no such PCI device (${pciDevicePath(p, bdf)} does not exist)${near.length ? `; did you mean ${near.join(' or ')}?` : ''}`,
      });
      continue;
    }
    if (dev.iommuGroup === undefined) {
      refusals.push({ bdf, reason: 'has no IOMMU group (no IOMMU translates for it: is the IOMMU enabled, e.g. intel_iommu=on?)' });
    } else {
      for (const peer of dev.groupMembers) {
        if (peer === bdf || listed.has(peer) || peersOk.has(peer)) continue;
        if (readPciDevice(p, peer)?.isBridge) continue;
        refusals.push({
          bdf,
          reason: `IOMMU group ${dev.iommuGroup} also holds ${peer}, which the profile does not list (add it to devices or allowGroupPeers)`,
        });
      }
    }
    for (const use of deviceInUse(p, dev.path)) refusals.push({ bdf, reason: `in use by the host: ${use}` });
  }
  return refusals;
}

/** The process's start time (stat field 22), to tell a live run from a reused pid. Always the real /proc: pids are real. */
export function readJournal(path: string): JournalEntry[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  const out: JournalEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const e = JSON.parse(line) as JournalEntry;
      if ((e.op === 'bind' || e.op === 'restored') && typeof e.bdf === 'string') out.push(e);
    } catch {
      // A line cut short by the kill that the journal exists for: the line before it stands.
    }
  }
  return out;
}

export class VfioBinder {
  readonly paths: HostPaths;
  readonly writer: SysfsWriter;
  readonly journal: string;
  private readonly bindDeadlineMs: number;
  private readonly log: (line: string) => void;
  private readonly held = new Map<string, BoundDevice>();
  private removeHandlers: (() => void) | undefined;

  constructor(
    readonly profile: HostProfile,
    opts: BinderOptions = {},
  ) {
    this.paths = hostPaths(opts.paths);
    this.writer = opts.writer ?? kernelWriter;
    this.journal = opts.journal ?? defaultJournalPath();
    this.bindDeadlineMs = scaled(opts.bindDeadlineMs ?? 5000);
    this.log = opts.log ?? (() => {});
  }

  get bound(): BoundDevice[] {
    return [...this.held.values()];
  }

  /**
   * Gives back every device a previous run bound and did not restore (it was
   * killed). Entries of a run that is still alive are left alone.
   */
  replayJournal(): RestoreResult[] {
    const entries = readJournal(this.journal);
    if (!entries.length) return [];
    const open = new Map<string, Extract<JournalEntry, { op: 'bind' }>>();
    for (const e of entries) {
      if (e.op === 'bind') open.set(e.bdf, e);
      else open.delete(e.bdf);
    }
    const results: RestoreResult[] = [];
    const keep: JournalEntry[] = [];
    for (const e of open.values()) {
      if (e.pid !== process.pid && this.alive(e.pid, e.start)) {
        keep.push(e);
        this.log(`journal: ${e.bdf} belongs to running process ${e.pid}; left alone`);
        continue;
      }
      if (e.pid === process.pid && this.held.has(e.bdf)) {
        keep.push(e);
        continue;
      }
      const r = this.giveBack(e.bdf, e.originalDriver, e.originalOverride);
      results.push({ ...r, detail: `from the journal of process ${e.pid}: ${r.detail}` });
      if (!r.ok) keep.push(e);
    }
    this.rewriteJournal(keep);
    return results;
  }

  private alive(pid: number, start: string | undefined): boolean {
    // A reused pid is another process: ownerAlive compares start times when we have them.
    return ownerAlive(start === undefined ? { pid } : { pid, start });
  }

  private rewriteJournal(entries: JournalEntry[]): void {
    if (!entries.length) {
      try {
        unlinkSync(this.journal);
      } catch {
        // already gone
      }
      return;
    }
    const tmp = `${this.journal}.${process.pid}.tmp`;
    writeFileSync(tmp, entries.map((e) => `${JSON.stringify(e)}\n`).join(''));
    renameSync(tmp, this.journal);
  }

  private appendJournal(e: JournalEntry): void {
    let fd: number;
    try {
      mkdirSync(dirname(this.journal), { recursive: true });
      fd = openSync(this.journal, 'a');
    } catch (err) {
      throw new Error(`cannot write the vfio journal ${this.journal} (set HARNESS_VFIO_JOURNAL to a writable path): ${(err as Error).message}`);
    }
    try {
      writeSync(fd, `${JSON.stringify(e)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Binds the listed devices (all of the profile's when none are named) to
   * vfio-pci, after replaying the journal and checking every one of them.
   */
  async bind(bdfs: string[] = this.profile.devices.map((d) => d.bdf)): Promise<BoundDevice[]> {
    this.replayJournal();
    const wanted = [...new Set(bdfs.map((b) => normalizeBdf(b) ?? b))].filter((b) => !this.held.has(b));
    const refusals = checkBindable(this.profile, wanted, this.paths);
    if (refusals.length) throw new BindRefused(refusals);
    const done: BoundDevice[] = [];
    for (const bdf of wanted) {
      try {
        done.push(await this.bindOne(bdf));
      } catch (e) {
        // Give back what this call took, so a failure leaves the host as it was.
        for (const d of done) this.restore(d.bdf);
        this.restore(bdf);
        throw e;
      }
    }
    return [...this.held.values()].filter((d) => wanted.includes(d.bdf));
  }

  private async bindOne(bdf: string): Promise<BoundDevice> {
    const p = this.paths;
    const dev = readPciDevice(p, bdf)!;
    const originalDriver = dev.driver ?? null;
    const originalOverride = dev.driverOverride ?? null;
    if (originalDriver === 'vfio-pci') {
      const vfioDev = await this.waitForVfioDev(bdf);
      const b: BoundDevice = { bdf, cdev: join(p.dev, 'vfio', 'devices', vfioDev), vfioDev, group: dev.iommuGroup!, originalDriver, originalOverride, wasVfio: true };
      this.held.set(bdf, b);
      this.log(`${bdf}: already on vfio-pci (${vfioDev}); left as it is`);
      return b;
    }
    this.appendJournal({ op: 'bind', bdf, originalDriver, originalOverride, pid: process.pid, ...optional('start', processStart('self')), time: new Date().toISOString() });
    const b: BoundDevice = { bdf, cdev: '', vfioDev: '', group: dev.iommuGroup!, originalDriver, originalOverride, wasVfio: false };
    this.held.set(bdf, b);
    const devPath = pciDevicePath(p, bdf);
    this.writer.write(join(devPath, 'driver_override'), 'vfio-pci');
    if (originalDriver) this.writer.write(join(pciDriversDir(p), originalDriver, 'unbind'), bdf);
    this.writer.write(join(p.sys, 'bus', 'pci', 'drivers_probe'), bdf);
    const vfioDev = await this.waitForVfioDev(bdf);
    b.vfioDev = vfioDev;
    b.cdev = join(p.dev, 'vfio', 'devices', vfioDev);
    this.log(`${bdf}: ${originalDriver ?? 'no driver'} → vfio-pci (${b.cdev})`);
    return b;
  }

  private async waitForVfioDev(bdf: string): Promise<string> {
    const p = this.paths;
    const until = Date.now() + this.bindDeadlineMs;
    for (;;) {
      const d = readPciDevice(p, bdf);
      if (d?.driver === 'vfio-pci' && d.vfioDev && existsSync(join(p.dev, 'vfio', 'devices', d.vfioDev))) return d.vfioDev;
      if (Date.now() >= until) {
        const what = !d ? 'the device vanished' : d.driver !== 'vfio-pci' ? `driver is ${d.driver ?? 'none'}` : !d.vfioDev ? 'no vfio-dev/vfioN (kernel without CONFIG_VFIO_DEVICE_CDEV?)' : `no ${join(p.dev, 'vfio', 'devices', d.vfioDev)}`;
        throw new Error(`${bdf}: vfio-pci did not take the device within ${this.bindDeadlineMs} ms (${what})`);
      }
      await sleep(20);
    }
  }

  /** Gives one device back (synchronous, so it also runs from exit and signal handlers). */
  restore(bdf: string): RestoreResult {
    const b = this.held.get(bdf);
    if (!b) return { bdf, ok: true, detail: 'not held' };
    this.held.delete(bdf);
    if (b.wasVfio) return { bdf, ok: true, detail: 'was on vfio-pci before; left there' };
    const r = this.giveBack(bdf, b.originalDriver, b.originalOverride);
    if (r.ok) this.appendJournal({ op: 'restored', bdf, pid: process.pid, time: new Date().toISOString() });
    return r;
  }

  restoreAll(): RestoreResult[] {
    const results = [...this.held.keys()].reverse().map((bdf) => this.restore(bdf));
    if (results.length && results.every((r) => r.ok)) this.rewriteJournal(readJournal(this.journal).filter((e) => e.pid !== process.pid));
    return results;
  }

  private giveBack(bdf: string, originalDriver: string | null, originalOverride: string | null): RestoreResult {
    const p = this.paths;
    const devPath = pciDevicePath(p, bdf);
    const steps: string[] = [];
    try {
      if (!existsSync(devPath)) return { bdf, ok: true, detail: 'the device is gone (hot-unplugged); nothing to give back' };
      // "\n" clears an override: an empty write never reaches the kernel's store().
      this.writer.write(join(devPath, 'driver_override'), originalOverride ? originalOverride : '\n');
      steps.push(originalOverride ? `driver_override=${originalOverride}` : 'driver_override cleared');
      const now = driverOf(devPath);
      if (now === originalDriver) return { bdf, ok: true, detail: `${steps.join(', ')}; already on ${originalDriver ?? 'no driver'}` };
      if (now === 'vfio-pci') {
        // vfio-pci's remove() waits until every user closes the device: with a
        // QEMU (say, one a killed run left behind) still holding it, the unbind
        // write would block this process indefinitely.
        const vfioDev = readPciDevice(p, bdf)?.vfioDev;
        const holders = vfioDev ? cdevHolders(p, join(p.dev, 'vfio', 'devices', vfioDev)) : [];
        if (holders.length) return { bdf, ok: false, detail: `${steps.join(', ')}; ${vfioDev} is held open by pid ${holders.join(', ')}: not unbinding while it is in use` };
      }
      if (now) {
        this.writer.write(join(pciDriversDir(p), now, 'unbind'), bdf);
        steps.push(`unbound from ${now}`);
      }
      if (!originalDriver) return { bdf, ok: true, detail: `${steps.join(', ')}; it had no driver` };
      this.writer.write(join(p.sys, 'bus', 'pci', 'drivers_probe'), bdf);
      if (driverOf(devPath) !== originalDriver && existsSync(join(pciDriversDir(p), originalDriver, 'bind'))) {
        // Another driver matched first (or none did): ask the original one directly.
        const other = driverOf(devPath);
        if (other) this.writer.write(join(pciDriversDir(p), other, 'unbind'), bdf);
        this.writer.write(join(pciDriversDir(p), originalDriver, 'bind'), bdf);
      }
      const after = driverOf(devPath);
      if (after !== originalDriver) return { bdf, ok: false, detail: `${steps.join(', ')}; driver is ${after ?? 'none'}, not ${originalDriver}` };
      return { bdf, ok: true, detail: `${steps.join(', ')}; back on ${originalDriver}` };
    } catch (e) {
      return { bdf, ok: false, detail: `${steps.length ? `${steps.join(', ')}; then ` : ''}${(e as Error).message}` };
    }
  }

  /**
   * Gives every device back on SIGINT, SIGTERM and process exit; after a
   * signal the process still dies of it (exit status 128+N). Returns the
   * function that removes the handlers.
   */
  installSignalHandlers(): () => void {
    this.removeHandlers?.();
    const onSignal = (sig: NodeJS.Signals): void => {
      // harness run fails the test, stops its QEMUs (which hold the devices) and
      // then gives them back through the lab's teardown or this exit handler.
      if (runOwnsInterrupts()) return;
      const results = this.restoreAll();
      for (const r of results) this.log(`${sig}: ${r.bdf}: ${r.detail}`);
      remove();
      process.kill(process.pid, sig);
    };
    const onExit = (): void => {
      this.restoreAll();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('exit', onExit);
    const remove = (): void => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('exit', onExit);
      this.removeHandlers = undefined;
    };
    this.removeHandlers = remove;
    return remove;
  }
}

/** Processes with the cdev open (from /proc/PID/fd), other than this one. */
export function cdevHolders(p: HostPaths, cdev: string): number[] {
  const pids: number[] = [];
  for (const pid of listDir(p.proc)) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const fdDir = join(p.proc, pid, 'fd');
    for (const fd of listDir(fdDir)) {
      try {
        if (readlinkSync(join(fdDir, fd)) === cdev) {
          pids.push(Number(pid));
          break;
        }
      } catch {
        // gone, or not ours to read
      }
    }
  }
  return pids;
}

function driverOf(devPath: string): string | null {
  try {
    return basename(readlinkSync(join(devPath, 'driver')));
  } catch {
    return null;
  }
}

function optional<K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: V };
}

/** Replays a journal without binding anything (e.g. at the start of `harness run`). */
export function replayVfioJournal(profile: HostProfile, opts: BinderOptions = {}): RestoreResult[] {
  return new VfioBinder(profile, opts).replayJournal();
}
