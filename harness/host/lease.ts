/**
 * Device leases: two harness runs on one machine never take the same device.
 * A lease is a file <dir>/<bdf>.lease made with O_EXCL and holding its owner
 * (pid and start time); a lease whose owner is dead (a killed run) is
 * reclaimed. Taking one waits up to a deadline, then names the holder so the
 * test can skip with "device X is leased by run PID".
 */
import { closeSync, existsSync, linkSync, openSync, readFileSync, renameSync, unlinkSync, writeSync, accessSync, constants, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from '../util/deadline.js';
import { ownerAlive, selfOwner, type Owner } from '../util/owner.js';
import { cacheDir } from '../util/paths.js';
import type { BoundDevice, VfioBinder } from './vfio-bind.js';

export interface LeaseOwner extends Owner {
  time: string;
}

/** Where leases live: $HARNESS_LEASE_DIR, else /run/viommu-harness/leases (gone at reboot, as leases should be), else the cache. */
export function leaseDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HARNESS_LEASE_DIR) return env.HARNESS_LEASE_DIR;
  try {
    accessSync('/run', constants.W_OK);
    return '/run/viommu-harness/leases';
  } catch {
    return join(cacheDir(), 'leases');
  }
}

/** How long taking a lease waits for another run to give the device back (default 30 s). */
export function leaseWaitMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.HARNESS_LEASE_WAIT_MS;
  if (v === undefined) return 30_000;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`HARNESS_LEASE_WAIT_MS wants a whole number of milliseconds, not ${JSON.stringify(v)}`);
  return n;
}

/** Why a device cannot be had: "device X is leased by run PID N", the words a skip and the doctor give. */
export function leasedReason(bdf: string, holder: LeaseOwner | undefined, waitMs: number): string {
  const h = holder ?? { pid: 0, time: '?' };
  return `device ${bdf} is leased by run PID ${h.pid} (since ${h.time}; waited ${waitMs} ms)`;
}

export type LeaseResult = { ok: true } | { ok: false; holder: LeaseOwner; reason: string };

const fileName = (bdf: string): string => `${bdf.replace(/[^0-9A-Za-z.:_-]/g, '_')}.lease`;

function readOwner(path: string): LeaseOwner | undefined {
  try {
    const o = JSON.parse(readFileSync(path, 'utf8')) as LeaseOwner;
    return Number.isInteger(o.pid) ? o : undefined;
  } catch {
    return undefined;
  }
}

export class DeviceLeases {
  private readonly held = new Set<string>();
  private exitHook = false;
  private readonly me: LeaseOwner = { ...selfOwner(), time: new Date().toISOString() };

  constructor(readonly dir: string = leaseDir()) {}

  /** The lease's current holder, if any (alive or not). */
  holder(bdf: string): LeaseOwner | undefined {
    return readOwner(join(this.dir, fileName(bdf)));
  }

  /** One attempt: true when this process now holds the lease. */
  private tryTake(bdf: string): boolean {
    if (this.held.has(bdf)) return true;
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const path = join(this.dir, fileName(bdf));
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`lease ${path}: ${(e as Error).message}`);
      const o = readOwner(path);
      // A lease still being written (no owner yet) is young: wait for it like any other.
      if (!o || ownerAlive(o)) return false;
      this.reclaim(path, o);
      return this.tryTake(bdf); // with O_EXCL like anyone else: a live run may have been quicker
    }
    try {
      writeSync(fd, `${JSON.stringify(this.me)}\n`);
    } finally {
      closeSync(fd);
    }
    this.held.add(bdf);
    if (!this.exitHook) {
      this.exitHook = true;
      // After the binder's exit handler (registered earlier), which gives the devices back first.
      process.on('exit', () => this.releaseAll());
    }
    return true;
  }

  /**
   * Moves a dead owner's lease aside. If another run reclaimed it and took a
   * fresh one in between, the file moved is that run's live lease: put it back.
   */
  private reclaim(path: string, dead: LeaseOwner): void {
    const aside = `${path}.stale.${process.pid}`;
    try {
      renameSync(path, aside);
    } catch {
      return; // someone else moved it first
    }
    const moved = readOwner(aside);
    if (moved && (moved.pid !== dead.pid || moved.start !== dead.start)) {
      try {
        linkSync(aside, path);
      } catch {
        /* a third run took the lease meanwhile; the one moved keeps its device by its own record */
      }
    }
    unlinkSync(aside);
  }

  /** Takes the lease, waiting up to `waitMs` for its holder to give it back. */
  async take(bdf: string, waitMs = leaseWaitMs()): Promise<LeaseResult> {
    const until = Date.now() + waitMs;
    for (;;) {
      if (this.tryTake(bdf)) return { ok: true };
      if (Date.now() >= until) {
        const holder = this.holder(bdf) ?? { pid: 0, time: '?' };
        return { ok: false, holder, reason: leasedReason(bdf, holder, waitMs) };
      }
      await sleep(Math.min(100, Math.max(1, until - Date.now())));
    }
  }

  /** Gives one lease back (only a lease this process holds). */
  release(bdf: string): void {
    if (!this.held.delete(bdf)) return;
    const path = join(this.dir, fileName(bdf));
    const o = readOwner(path);
    if (o && o.pid === this.me.pid && o.start === this.me.start && existsSync(path)) unlinkSync(path);
  }

  releaseAll(): void {
    for (const bdf of [...this.held]) this.release(bdf);
  }

  get leased(): readonly string[] {
    return [...this.held];
  }
}

/**
 * Leases `bdfs` (waiting for all at once, one deadline) and binds those this
 * run got; the others are left to the run that holds them, with the reason.
 * Call after binder.installSignalHandlers(): the leases' exit hook then runs
 * after the binder's, which gives the devices back first.
 */
export async function leaseAndBind(
  binder: VfioBinder,
  leases: DeviceLeases,
  bdfs: readonly string[],
  waitMs = leaseWaitMs(),
): Promise<{ bound: BoundDevice[]; elsewhere: Map<string, string> }> {
  const taken = await Promise.all(bdfs.map(async (bdf) => [bdf, await leases.take(bdf, waitMs)] as const));
  const elsewhere = new Map(taken.flatMap(([bdf, r]) => (r.ok ? [] : [[bdf, r.reason] as const])));
  try {
    return { bound: await binder.bind(bdfs.filter((b) => !elsewhere.has(b))), elsewhere };
  } catch (e) {
    for (const b of bdfs) if (!elsewhere.has(b)) leases.release(b);
    throw e;
  }
}
