/**
 * chai assertions on an IommufdModel: `chai.use(iommufdAssertions)`, then e.g.
 * `expect(model).to.have.allocatedHwpt({ flags: ['NEST_PARENT', 'PASID'] })`.
 * Failure messages name the expected flags and quote the trace lines (with
 * their line numbers) that the assertion looked at.
 */
import { errnoName, errnoValue, formatHwptFlags, hwptDataTypeName, hwptFlagsFromNames, HWPT_DATA_TYPES, encodeEnum } from './flags.js';
import { excerpt, IommufdModel, type Attach, type HwptAlloc } from './model.js';
import type { HwptExpectation } from './oracle.js';

export interface HwptMatch {
  /** Exactly these flags: names (`NEST_PARENT`, `IOMMU_HWPT_ALLOC_PASID`, hex for unknown bits) or a number. */
  flags?: readonly (string | number)[] | number;
  devId?: number;
  ptId?: number;
  /** What pt_id must name, when the model saw it allocated. */
  ptKind?: 'ioas' | 'hwpt';
  hwptType?: number | string;
  len?: number;
  /** 0, a negative errno, or its name (`EOPNOTSUPP`). allocatedHwpt defaults to 0; requestedHwpt to any. */
  ret?: number | string;
}

export interface AttachMatch {
  pasid?: number;
  devId?: number;
  name?: string;
  targetId?: number;
  targetKind?: 'ioas' | 'hwpt';
}

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Chai {
    interface Assertion {
      /** A successful (unless `ret` says otherwise) HWPT allocation matching every given field. */
      allocatedHwpt(expected?: HwptMatch): Assertion;
      /** An HWPT allocation request matching every given field, whatever the kernel answered. */
      requestedHwpt(expected?: HwptMatch): Assertion;
      /** No object allocated that was not freed. */
      freedEverything(): Assertion;
      /** An attach (cdev attach line) matching every given field. */
      attached(expected?: AttachMatch): Assertion;
      /** The HWPT request for `devId` (or the only device) is what the oracle computed, or absent when it says reuse. */
      requestedPerOracle(expectation: HwptExpectation, opts?: { devId?: number }): Assertion;
    }
  }
}

interface Resolved {
  flags?: number;
  devId?: number;
  ptId?: number;
  ptKind?: 'ioas' | 'hwpt';
  hwptType?: number;
  len?: number;
  ret?: number;
}

function resolve(m: HwptMatch, defaultRet: number | undefined): Resolved {
  const r: Resolved = {};
  if (m.flags !== undefined) r.flags = typeof m.flags === 'number' ? m.flags : hwptFlagsFromNames(m.flags);
  if (m.devId !== undefined) r.devId = m.devId;
  if (m.ptId !== undefined) r.ptId = m.ptId;
  if (m.ptKind !== undefined) r.ptKind = m.ptKind;
  if (m.hwptType !== undefined) r.hwptType = encodeEnum(HWPT_DATA_TYPES, m.hwptType, ['IOMMU_HWPT_DATA_']);
  if (m.len !== undefined) r.len = m.len;
  const ret = m.ret ?? defaultRet;
  if (ret !== undefined) r.ret = errnoValue(ret);
  return r;
}

function describe(r: Resolved): string {
  const parts: string[] = [];
  if (r.flags !== undefined) parts.push(`flags=${formatHwptFlags(r.flags)}`);
  if (r.devId !== undefined) parts.push(`dev_id=${r.devId}`);
  if (r.ptId !== undefined) parts.push(`pt_id=${r.ptId}`);
  if (r.ptKind !== undefined) parts.push(`pt_id naming an ${r.ptKind.toUpperCase()}`);
  if (r.hwptType !== undefined) parts.push(`hwpt_type=${r.hwptType} (${hwptDataTypeName(r.hwptType)})`);
  if (r.len !== undefined) parts.push(`len=${r.len}`);
  if (r.ret !== undefined) parts.push(`ret=${r.ret} (${errnoName(r.ret)})`);
  return parts.length ? parts.join(', ') : 'any fields';
}

/** Every field given in `want` equals the one in `have` (the names are shared on purpose). */
function matches<T extends object>(have: T, want: Partial<T>): boolean {
  return Object.entries(want).every(([k, v]) => v === undefined || have[k as keyof T] === v);
}

function summarize(h: HwptAlloc): string {
  return `  L${h.record.line}: dev_id=${h.devId} pt_id=${h.ptId} flags=${formatHwptFlags(h.flags)} hwpt_type=${h.hwptType} len=${h.len} → id=${h.id} ret=${h.ret} (${h.errno})`;
}

function diagnosticsNote(m: IommufdModel): string {
  if (m.diagnostics.length === 0) return '';
  return `\n${m.diagnostics.length} trace line(s) did not parse and are not in the model:\n${excerpt(m.diagnostics, 5)}`;
}

function hwptReport(m: IommufdModel, what: string): string {
  const reqs = m.hwptAllocs;
  const head = reqs.length
    ? `the trace has ${reqs.length} HWPT request(s):\n${reqs.map(summarize).join('\n')}`
    : 'the trace has no iommufd_backend_alloc_hwpt line';
  return `expected ${what}\n${head}\ntrace excerpt:\n${excerpt(m.used)}${diagnosticsNote(m)}`;
}

function modelOf(obj: unknown): IommufdModel {
  if (obj instanceof IommufdModel) return obj;
  const name = obj === null ? 'null' : typeof obj === 'object' ? (obj.constructor?.name ?? 'object') : typeof obj;
  throw new TypeError(`expected an IommufdModel (harness/trace/model.ts), got ${name}`);
}

export function iommufdAssertions(chai: Chai.ChaiStatic, utils: Chai.ChaiUtils): void {
  const A = chai.Assertion;

  const hwptMethod = (defaultRet: number | undefined, verb: string) =>
    function (this: Chai.AssertionStatic, expected: HwptMatch = {}) {
      const m = modelOf(utils.flag(this, 'object'));
      const r = resolve(expected, defaultRet);
      const found = m.hwptAllocs.filter((h) => matches<HwptAlloc>(h, r));
      const what = `${verb} with ${describe(r)}`;
      this.assert(
        found.length > 0,
        hwptReport(m, `an HWPT ${what}`),
        `expected no HWPT ${what}, but found:\n${excerpt(found.map((h) => h.record))}`,
        describe(r),
        m.hwptAllocs.map((h) => `flags=${formatHwptFlags(h.flags)} dev_id=${h.devId} ret=${h.ret}`).join('; ') || 'none',
      );
    };

  A.addMethod('allocatedHwpt', hwptMethod(0, 'allocation'));
  A.addMethod('requestedHwpt', hwptMethod(undefined, 'request'));

  A.addMethod('freedEverything', function (this: Chai.AssertionStatic) {
    const m = modelOf(utils.flag(this, 'object'));
    const live = m.liveObjects();
    const list = live.map((o) => `  ${o.kind} ${o.id} (iommufd ${o.iommufd}) allocated at L${o.record.line}: ${o.record.raw}`);
    this.assert(
      live.length === 0,
      `expected every allocated iommufd object to be freed, but ${live.length} still live:\n${list.join('\n')}\ntrace excerpt:\n${excerpt(m.used)}${diagnosticsNote(m)}`,
      'expected some iommufd object to be left allocated, but everything was freed',
      [],
      live.map((o) => `${o.kind} ${o.id}`),
    );
  });

  A.addMethod('attached', function (this: Chai.AssertionStatic, expected: AttachMatch = {}) {
    const m = modelOf(utils.flag(this, 'object'));
    const found = m.attaches.filter((a) => matches<Attach>(a, expected));
    const want = JSON.stringify(expected);
    const have = m.attaches.length
      ? m.attaches.map((a) => `  L${a.record.line}: ${a.name} devid=${a.devId ?? '?'} pasid=${a.pasid ?? '(none)'} → id=${a.targetId} (${a.targetKind ?? '?'})`).join('\n')
      : '  (no attach line)';
    this.assert(
      found.length > 0,
      `expected an attach matching ${want}; attaches in the trace:\n${have}\ntrace excerpt:\n${excerpt(m.used)}${diagnosticsNote(m)}`,
      `expected no attach matching ${want}, but found:\n${excerpt(found.map((a) => a.record))}`,
    );
  });

  A.addMethod('requestedPerOracle', function (this: Chai.AssertionStatic, exp: HwptExpectation, opts: { devId?: number } = {}) {
    const m = modelOf(utils.flag(this, 'object'));
    const mine = m.hwptAllocs.filter(
      (h) => (opts.devId === undefined || h.devId === opts.devId) && (h.ptKind === undefined || h.ptKind === 'ioas'),
    );
    const who = opts.devId === undefined ? 'the device' : `dev_id ${opts.devId}`;
    if (!exp.parent) {
      this.assert(
        mine.length === 0,
        `expected no HWPT request for ${who} (oracle:\n${exp.explanation})\n${hwptReport(m, 'no allocation')}`,
        `expected an HWPT request for ${who}, found none`,
      );
      return;
    }
    const p = exp.parent;
    const r: Resolved = { flags: p.flags, hwptType: p.hwptType, len: p.len };
    if (opts.devId !== undefined) r.devId = opts.devId;
    const ok = mine.length > 0 && mine.every((h) => matches<HwptAlloc>(h, r));
    this.assert(
      ok,
      hwptReport(m, `HWPT request(s) for ${who} with ${describe(r)}; the oracle says:\n${exp.explanation}`),
      `expected ${who}'s HWPT request to differ from the oracle (${describe(r)})`,
      formatHwptFlags(p.flags),
      mine.map((h) => formatHwptFlags(h.flags)).join(', ') || 'no request',
    );
  });
}
