/**
 * chai assertions on an IommufdModel: `chai.use(iommufdAssertions)`, then e.g.
 * `expect(model).to.have.allocatedHwpt({ flags: ['NEST_PARENT', 'PASID'] })`.
 * Failure messages name the expected flags and quote the trace lines (with
 * their line numbers) that the assertion looked at.
 */
import { errnoName, errnoValue, formatHwptFlags, hwptDataTypeName, hwptFlagsFromNames, HWPT_DATA_TYPES, encodeEnum } from './flags.js';
import { excerpt, IommufdModel, type Attach, type HwptAlloc, type HwptRole, type ObjectKind } from './model.js';
import { describeMismatch, type HwptExpectation, type HwptRequest, type RealizeFailureExpectation } from './oracle.js';

export interface HwptMatch {
  /** Exactly these flags: names (`NEST_PARENT`, `IOMMU_HWPT_ALLOC_PASID`, hex for unknown bits) or a number. */
  flags?: readonly (string | number)[] | number;
  devId?: number;
  ptId?: number;
  /** What pt_id must name, when the model saw it allocated. */
  ptKind?: 'ioas' | 'hwpt' | 'viommu';
  /** parent, abort, bypass or nested (model.ts HwptRole). */
  role?: HwptRole;
  hwptType?: number | string;
  len?: number;
  /**
   * `OK` or 0: succeeded; a number: the traced ret exactly (-1 for a raw ioctl
   * failure); an errno name (`EOPNOTSUPP`) or a negative errno: failed with
   * that errno, from whichever source gave it (kernel, QEMU's message).
   * allocatedHwpt defaults to OK; requestedHwpt to any.
   */
  ret?: number | string;
}

export interface AttachMatch {
  pasid?: number;
  devId?: number;
  name?: string;
  targetId?: number;
  targetKind?: 'ioas' | 'hwpt';
  targetRole?: HwptRole;
}

export interface SmmuSequenceOptions {
  /** The device (default: the only bound one). */
  devId?: number;
  /** The kernel refused IOMMU_VIOMMU_ALLOC (no CANWBS/S2FWB): the sequence stops there. */
  viommuRefused?: boolean;
  /** The guest booted and probed its SMMU: vdevice, STEs, vEVENTQ, a nested HWPT. */
  booted?: boolean;
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
      /**
       * The HWPT requests on an IOAS for `devId` (or the only device) are what
       * the oracle computed: each with its flags, no more than it allows (a
       * retry in a new IOAS after a refusal in an existing container is one
       * more), none when it says reuse.
       */
      requestedPerOracle(expectation: HwptExpectation, opts?: { devId?: number }): Assertion;
      /** arm-smmuv3 accel: the vIOMMU, abort then bypass HWPTs on it, the re-attach, and with a booted guest the vdevice, STEs, vEVENTQ and nested HWPT. */
      smmuAccelSequence(expectation: HwptExpectation, opts?: SmmuSequenceOptions): Assertion;
      /** A realize that failed after the device's HWPT was allocated and attached: detach and frees follow when the device was hot-plugged, none when cold-plugged. */
      realizeFailedAfterAlloc(expectation: RealizeFailureExpectation, opts?: { devId?: number }): Assertion;
      /** vfio-pci synthesized a PASID capability for the device (vfio_pci_synthesize_pasid_cap) exactly when the oracle says so. */
      pasidCapPerOracle(expectation: HwptExpectation, opts?: { name?: string }): Assertion;
    }
  }
}

interface Resolved {
  flags?: number;
  devId?: number;
  ptId?: number;
  ptKind?: ObjectKind;
  role?: HwptRole;
  hwptType?: number;
  len?: number;
  ok?: boolean;
  ret?: number;
  errno?: string;
}

function resolve(m: HwptMatch, defaultRet: number | string | undefined): Resolved {
  const r: Resolved = {};
  if (m.flags !== undefined) r.flags = typeof m.flags === 'number' ? m.flags : hwptFlagsFromNames(m.flags);
  if (m.devId !== undefined) r.devId = m.devId;
  if (m.ptId !== undefined) r.ptId = m.ptId;
  if (m.ptKind !== undefined) r.ptKind = m.ptKind;
  if (m.role !== undefined) r.role = m.role;
  if (m.hwptType !== undefined) r.hwptType = encodeEnum(HWPT_DATA_TYPES, m.hwptType, ['IOMMU_HWPT_DATA_']);
  if (m.len !== undefined) r.len = m.len;
  const ret = m.ret ?? defaultRet;
  if (ret === 0 || ret === 'OK') r.ok = true;
  else if (ret === -1) r.ret = -1;
  else if (typeof ret === 'number') {
    // A negative errno (never -1: that is the raw ioctl result): what the request failed with, whoever said it.
    r.ok = false;
    r.errno = errnoName(ret);
  } else if (typeof ret === 'string') {
    errnoValue(ret); // throws, naming it, for an unknown name
    r.ok = false;
    r.errno = ret;
  }
  return r;
}

function describe(r: Resolved): string {
  const parts: string[] = [];
  if (r.flags !== undefined) parts.push(`flags=${formatHwptFlags(r.flags)}`);
  if (r.devId !== undefined) parts.push(`dev_id=${r.devId}`);
  if (r.ptId !== undefined) parts.push(`pt_id=${r.ptId}`);
  if (r.ptKind !== undefined) parts.push(`pt_id naming a ${r.ptKind === 'viommu' ? 'vIOMMU' : r.ptKind.toUpperCase()}`);
  if (r.role !== undefined) parts.push(`role ${r.role}`);
  if (r.hwptType !== undefined) parts.push(`hwpt_type=${r.hwptType} (${hwptDataTypeName(r.hwptType)})`);
  if (r.len !== undefined) parts.push(`len=${r.len}`);
  if (r.ok === true) parts.push('ret=0 (OK)');
  if (r.ret !== undefined) parts.push(`ret=${r.ret}`);
  if (r.errno !== undefined) parts.push(`failed with ${r.errno}`);
  return parts.length ? parts.join(', ') : 'any fields';
}

/** Every field given in `want` equals the one in `have` (the names are shared on purpose). */
function matches<T extends object>(have: T, want: Partial<T>): boolean {
  return Object.entries(want).every(([k, v]) => v === undefined || have[k as keyof T] === v);
}

function summarize(h: HwptAlloc): string {
  const role = h.role ? ` [${h.role}]` : '';
  return `  L${h.record.line}: dev_id=${h.devId} pt_id=${h.ptId}${h.ptKind ? ` (${h.ptKind})` : ''} flags=${formatHwptFlags(h.flags)} hwpt_type=${h.hwptType} len=${h.len} → id=${h.id} ret=${h.ret}: ${h.outcome}${role}`;
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

/** The device an assertion is about: the given devId, or the only one bound. */
function deviceOf(m: IommufdModel, devId: number | undefined, what: string): number {
  if (devId !== undefined) return devId;
  const bound = [...new Set(m.binds.map((b) => b.devId))];
  // Without bind lines (cdev events off), the devices that asked for HWPTs.
  const ids = bound.length ? bound : [...new Set(m.hwptAllocs.map((h) => h.devId))];
  if (ids.length === 1) return ids[0]!;
  throw new Error(`${what}: give opts.devId: the trace binds ${ids.length ? `devices ${ids.join(', ')}` : 'no device'}`);
}

/** Does this request look like the oracle's (flags aside: type, len, pt_id kind)? */
function fitsRequest(h: HwptAlloc, want: HwptRequest): boolean {
  const kind: Record<HwptRequest['ptId'], ObjectKind> = { ioas: 'ioas', parent: 'hwpt', viommu: 'viommu' };
  return h.flags === want.flags && h.hwptType === want.hwptType && h.len === want.len && (h.ptKind === undefined || h.ptKind === kind[want.ptId]);
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
        m.hwptAllocs.map((h) => `flags=${formatHwptFlags(h.flags)} dev_id=${h.devId} ${h.outcome}`).join('; ') || 'none',
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
      ? m.attaches
          .map((a) => `  L${a.record.line}: ${a.name} devid=${a.devId ?? '?'} pasid=${a.pasid ?? '(none)'} → id=${a.targetId} (${a.targetKind ?? '?'}${a.targetRole ? ` ${a.targetRole}` : ''})`)
          .join('\n')
      : '  (no attach line)';
    this.assert(
      found.length > 0,
      `expected an attach matching ${want}; attaches in the trace:\n${have}\ntrace excerpt:\n${excerpt(m.used)}${diagnosticsNote(m)}`,
      `expected no attach matching ${want}, but found:\n${excerpt(found.map((a) => a.record))}`,
    );
  });

  A.addMethod('requestedPerOracle', function (this: Chai.AssertionStatic, exp: HwptExpectation, opts: { devId?: number } = {}) {
    const m = modelOf(utils.flag(this, 'object'));
    // The device's requests on an IOAS (the parent HWPT); nested and vIOMMU HWPTs are other assertions.
    const mine = m.hwptAllocs.filter((h) => (opts.devId === undefined || h.devId === opts.devId) && h.role === 'parent');
    const who = opts.devId === undefined ? 'the device' : `dev_id ${opts.devId}`;
    const head = describeMismatch(exp, mine.map((h) => h.flags), who);
    if (!exp.parent) {
      this.assert(
        mine.length === 0,
        `${head}\n(oracle:\n${exp.explanation})\n${hwptReport(m, 'no allocation')}`,
        `expected an HWPT request for ${who}, found none`,
      );
      return;
    }
    const p = exp.parent;
    const problems: string[] = [];
    if (mine.length === 0 && !exp.mayReuse) problems.push('no request');
    if (mine.length === 0 && exp.mayReuse) {
      const reused = m.attaches.some((a) => (opts.devId === undefined || a.devId === opts.devId) && a.targetKind === 'hwpt');
      if (!reused) problems.push('no request and no attach to an existing HWPT');
    }
    const wrong = mine.filter((h) => !fitsRequest(h, p));
    if (wrong.length) problems.push(`${wrong.length} request(s) unlike the oracle's (flags, hwpt_type=${p.hwptType}, len=${p.len}, pt_id an IOAS)`);
    if (mine.length > exp.maxRequests) {
      problems.push(`${mine.length} requests, at most ${exp.maxRequests} allowed`);
    } else if (mine.length === 2) {
      // The second is QEMU's retry in a new IOAS: after a refusal in the existing container, on another IOAS.
      const [a, b] = mine as [HwptAlloc, HwptAlloc];
      const retried = m.retries.some((x) => x.record.line > a.record.line && x.record.line < b.record.line);
      if (!retried) problems.push('a second request without iommufd_cdev_fail_attach_existing_container before it');
      if (a.ptId === b.ptId) problems.push(`the retry asked on the same IOAS (pt_id=${b.ptId}), not a new one`);
    }
    this.assert(
      problems.length === 0,
      `${head}\n(${problems.join('; ')})\n${hwptReport(m, `HWPT request(s) for ${who} with flags=${formatHwptFlags(p.flags)}, hwpt_type=${p.hwptType}, len=${p.len}; the oracle says:\n${exp.explanation}`)}`,
      `expected ${who}'s HWPT request to differ from the oracle (flags=${formatHwptFlags(p.flags)})`,
      formatHwptFlags(p.flags),
      mine.map((h) => formatHwptFlags(h.flags)).join(', ') || 'no request',
    );
  });

  A.addMethod('smmuAccelSequence', function (this: Chai.AssertionStatic, exp: HwptExpectation, opts: SmmuSequenceOptions = {}) {
    const m = modelOf(utils.flag(this, 'object'));
    const s = exp.smmu;
    if (!s || !exp.parent) throw new Error('smmuAccelSequence: the expectation has no SMMUv3 accel part (expectHwpt of arm-smmuv3 accel=on)');
    const devId = deviceOf(m, opts.devId, 'smmuAccelSequence');
    const problems: string[] = [];
    const allocs = m.hwptAllocs.filter((h) => h.devId === devId);
    const parent = allocs.find((h) => h.role === 'parent' && h.ok);
    if (!parent) problems.push(`no successful parent HWPT on an IOAS (expected flags=${formatHwptFlags(exp.parent.flags)})`);
    else if (!fitsRequest(parent, exp.parent)) problems.push(`parent: ${describeMismatch(exp, [parent.flags], `dev_id ${devId}`)}`);
    const viommu = m.viommus.find((v) => v.devId === devId);
    const at = (line: number | undefined) => line ?? Infinity;
    if (!s.allocatesViommu) {
      if (viommu) problems.push(`a later device must not allocate a vIOMMU, found one at L${viommu.record.line}`);
    } else if (!viommu) {
      problems.push('no alloc_viommu');
    } else {
      if (viommu.type !== s.viommu.type) problems.push(`alloc_viommu type=${viommu.type}, expected ${s.viommu.type} (ARM_SMMUV3)`);
      if (parent && viommu.hwptId !== parent.id) problems.push(`alloc_viommu hwpt_id=${viommu.hwptId}, expected the parent HWPT ${parent.id}`);
      if (parent && viommu.record.line < parent.record.line) problems.push('alloc_viommu before the parent HWPT');
      if (opts.viommuRefused) {
        if (viommu.ok) problems.push('alloc_viommu succeeded; the kernel was expected to refuse it');
        const after = allocs.filter((h) => h.record.line > viommu.record.line);
        if (after.length) problems.push(`HWPT requests after the refused vIOMMU: ${after.map((h) => `L${h.record.line}`).join(', ')}`);
      } else if (!viommu.ok) {
        problems.push(`alloc_viommu failed: ${viommu.outcome}`);
      } else {
        const onV = allocs.filter((h) => h.ptId === viommu.id && h.record.line > viommu.record.line);
        const [abort, bypass] = onV;
        for (const [name, h, want] of [['abort', abort, s.abort], ['bypass', bypass, s.bypass]] as const) {
          if (!h) problems.push(`no ${name} HWPT on the vIOMMU (pt_id=${viommu.id})`);
          else if (!fitsRequest(h, want) || h.role !== want.role || !h.ok) {
            problems.push(`${name} at L${h.record.line}: flags=${formatHwptFlags(h.flags)} hwpt_type=${h.hwptType} len=${h.len} role=${h.role ?? '?'} ${h.outcome}; expected flags=${formatHwptFlags(want.flags)} hwpt_type=${want.hwptType} len=${want.len}`);
          }
        }
        const target = s.reattach === 'bypass' ? bypass : abort;
        const reattach = target && m.attaches.find((a) => a.devId === devId && a.targetId === target.id && a.record.line > target.record.line);
        if (target && !reattach) problems.push(`no re-attach (pasid 0) to the ${s.reattach} HWPT ${target.id} after it was allocated`);
        const set = m.smmuDevices.find((d) => d.op === 'set' && d.devId === devId);
        if (!set) problems.push('no smmuv3_accel_set_iommu_device line');
        else if (reattach && set.record.line < reattach.record.line) problems.push('smmuv3_accel_set_iommu_device before the re-attach');
        if (opts.booted) {
          const vdev = m.vdevices.find((v) => v.devId === devId && v.viommuId === viommu.id);
          if (!vdev?.ok) problems.push(vdev ? `alloc_vdev failed: ${vdev.outcome}` : 'no alloc_vdev on the vIOMMU');
          const stes = m.smmuSte;
          if (!stes.length) problems.push('no smmuv3_accel_install_ste line');
          for (const st of stes) {
            const want = st.type === 'translate' ? 'nested' : st.type;
            if (st.hwptRole !== want) problems.push(`install_ste type=${st.type} hwpt_id=0x${st.hwptId.toString(16)} at L${st.record.line}, but that HWPT is ${st.hwptRole ?? 'unknown'}`);
            if (vdev && st.record.line < vdev.record.line) problems.push(`install_ste at L${st.record.line} before the vdevice`);
          }
          const nested = onV.slice(2);
          if (!nested.length) problems.push('no nested HWPT on the vIOMMU');
          for (const h of nested) if (!fitsRequest(h, s.nested) || h.role !== 'nested') problems.push(`nested request at L${h.record.line} unlike flags=0x0 hwpt_type=2 len=16`);
          if (!m.veventqs.some((q) => q.viommuId === viommu.id && q.ok)) problems.push('no vEVENTQ on the vIOMMU');
        }
        // Abort first, then bypass: smmuv3_accel_alloc_viommu's order.
        if (abort && bypass && at(abort.record.line) > at(bypass.record.line)) problems.push('bypass before abort');
      }
    }
    this.assert(
      problems.length === 0,
      `expected the SMMUv3 accel sequence for dev_id ${devId}:\n${s.order.map((o) => `  - ${o}`).join('\n')}\nbut: ${problems.join('; ')}\n${hwptReport(m, 'the sequence above')}`,
      `expected the trace not to show the SMMUv3 accel sequence for dev_id ${devId}`,
    );
  });

  A.addMethod('realizeFailedAfterAlloc', function (this: Chai.AssertionStatic, exp: RealizeFailureExpectation, opts: { devId?: number } = {}) {
    const m = modelOf(utils.flag(this, 'object'));
    const devId = deviceOf(m, opts.devId, 'realizeFailedAfterAlloc');
    const story = m.deviceStory(devId);
    const problems: string[] = [];
    if (!story) problems.push(`no bind of dev_id ${devId}`);
    else {
      const alloc = story.allocs.find((h) => h.ok && h.role === 'parent');
      if (!alloc) problems.push('no successful HWPT allocation: the realize failed before (or at) the alloc, not after');
      const attach = alloc && story.attaches.find((a) => a.targetId === alloc.id && a.record.line > alloc.record.line);
      // Without the cdev lines the trace cannot show the attach; the vIOMMU/vdevice request on the HWPT stands for it.
      const cdevLines = m.binds.length > 0;
      if (alloc && !attach && cdevLines) problems.push(`no attach to HWPT ${alloc.id}`);
      const detach = story.detaches.find((d) => !attach || d.record.line > attach.record.line);
      const live = story.objects.filter((o) => !o.freed);
      if (exp.detachesAndFrees) {
        if (!detach && cdevLines) problems.push('no detach after the attach');
        if (live.length) problems.push(`still live: ${live.map((o) => `${o.kind} ${o.id} (L${o.record.line})`).join(', ')}`);
        const early = story.objects.filter((o) => o.freed && detach && o.freed.line < detach.record.line);
        if (early.length) problems.push(`freed before the detach: ${early.map((o) => `${o.kind} ${o.id}`).join(', ')}`);
      } else {
        if (detach) problems.push(`a detach at L${detach.record.line}: ${exp.explanation}`);
        const freed = story.objects.filter((o) => o.freed);
        if (freed.length) problems.push(`frees of ${freed.map((o) => `${o.kind} ${o.id}`).join(', ')}: ${exp.explanation}`);
      }
      const msgs = m.qemuMessages;
      if (msgs.length && !msgs.some((q) => q.realizeCheck)) {
        problems.push(`QEMU's messages name no realize check that runs after the alloc:\n${msgs.map((q) => `    ${q.source} ${q.line}: ${q.text}`).join('\n')}`);
      }
    }
    this.assert(
      problems.length === 0,
      `expected a realize failing after dev_id ${devId}'s HWPT was allocated (${exp.explanation}), but: ${problems.join('; ')}\ntrace excerpt:\n${excerpt(m.used)}${diagnosticsNote(m)}`,
      `expected dev_id ${devId}'s realize not to fail after the alloc`,
    );
  });

  A.addMethod('pasidCapPerOracle', function (this: Chai.AssertionStatic, exp: HwptExpectation, opts: { name?: string } = {}) {
    const m = modelOf(utils.flag(this, 'object'));
    const caps = m.pasidCaps.filter((c) => opts.name === undefined || c.name === opts.name);
    const who = opts.name ?? 'the device';
    this.assert(
      caps.length > 0 === exp.synthesizesPasidCap,
      `expected ${exp.synthesizesPasidCap ? 'a' : 'no'} vfio_pci_synthesize_pasid_cap line for ${who}, found ${caps.length ? caps.map((c) => `L${c.record.line}: ${c.record.raw}`).join('; ') : 'none'}: ${exp.pasidCapWhy}\ntrace excerpt:\n${excerpt(m.used)}`,
      `expected the PASID capability synthesis for ${who} to differ from the oracle (${exp.pasidCapWhy})`,
    );
  });
}
