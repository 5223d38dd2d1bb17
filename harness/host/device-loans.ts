/**
 * Devices lent to the one test (or suite) that asked for them: leased and
 * bound to vfio-pci on the first request, given back (unbound to their own
 * driver, lease released) when that scope ends. Another run on the machine
 * can then take a device between our tests instead of waiting out our whole
 * suite. A scope is any object standing for a test or a suite (the lab
 * fixture passes mocha's); this module knows nothing of mocha.
 */
import { sleep } from '../util/deadline.js';
import { leasedReason, leaseWaitMs, type DeviceLeases } from './lease.js';
import type { BoundDevice, RestoreResult, VfioBinder } from './vfio-bind.js';

export type LoanResult = { ok: true; bound: BoundDevice[] } | { ok: false; reason: string };

/** How often a wait for a leased device tries again. */
const RETRY_MS = 100;

export class DeviceLoans {
  private readonly lent = new Map<string, { bound: BoundDevice; scope: object }>();

  constructor(
    private readonly binder: Pick<VfioBinder, 'bind' | 'restore'>,
    private readonly leases: DeviceLeases,
    private readonly waitMs = leaseWaitMs(),
  ) {}

  /**
   * `count` devices of `among` (BDFs, in order of preference) for `scope`.
   * Those this run already holds are reused, whatever scope took them (a
   * suite's device serves its tests); the rest are leased, waiting up to the
   * deadline for another run to give them back, then bound. What cannot be
   * had by then is left to its holder: the reason names the first one's PID.
   */
  async take(among: readonly string[], count: number, scope: object): Promise<LoanResult> {
    const reused = among.filter((b) => this.lent.has(b)).slice(0, count);
    const candidates = among.filter((b) => !this.lent.has(b));
    // No wait gives more devices than the profile lists.
    const listed = new Set(among).size;
    if (listed < count) return { ok: false, reason: `${count} devices asked, the profile lists ${listed}: ${among.join(', ') || '(none)'}` };
    const leased: string[] = [];
    const until = Date.now() + this.waitMs;
    for (;;) {
      for (const bdf of candidates) {
        if (reused.length + leased.length >= count) break;
        if (!leased.includes(bdf) && (await this.leases.take(bdf, 0)).ok) leased.push(bdf);
      }
      if (reused.length + leased.length >= count) break;
      if (Date.now() >= until) {
        for (const b of leased) this.leases.release(b);
        // Enough devices are listed (checked above), so one not had is held by another run.
        const busy = candidates.find((b) => !leased.includes(b))!;
        return { ok: false, reason: leasedReason(busy, this.leases.holder(busy), this.waitMs) };
      }
      await sleep(Math.min(RETRY_MS, Math.max(1, until - Date.now())));
    }
    let bound: BoundDevice[];
    try {
      bound = leased.length ? await this.binder.bind(leased) : [];
    } catch (e) {
      for (const b of leased) this.leases.release(b);
      throw e;
    }
    for (const b of bound) this.lent.set(b.bdf, { bound: b, scope });
    return { ok: true, bound: [...reused.map((b) => this.lent.get(b)!.bound), ...bound] };
  }

  /** Whether `bdf` is lent, and to which scope. */
  scopeOf(bdf: string): object | undefined {
    return this.lent.get(bdf)?.scope;
  }

  /** Gives back what `scope` took (newest first): each device to its own driver, then its lease. */
  giveBack(scope: object): RestoreResult[] {
    return this.giveBackWhere((s) => s === scope);
  }

  giveBackAll(): RestoreResult[] {
    return this.giveBackWhere(() => true);
  }

  private giveBackWhere(pick: (scope: object) => boolean): RestoreResult[] {
    const bdfs = [...this.lent].filter(([, l]) => pick(l.scope)).map(([bdf]) => bdf);
    return bdfs.reverse().map((bdf) => {
      this.lent.delete(bdf);
      const r = this.binder.restore(bdf);
      // Released even when the device would not go back: the failure is the caller's to report,
      // and the binder's journal, not a lease held to the end of the run, is what records it.
      this.leases.release(bdf);
      return r;
    });
  }
}
