import { errnoValue } from '../trace/flags.js';
import { compareSelfCheck, KprobeSession } from '../trace/kprobes.js';
import { probeHwptAlloc } from './hwinfo.js';

/**
 * Whether this host can show the kernel's own answers to QEMU's requests
 * (tracefs kprobes), proven rather than assumed: the probes are set, then a
 * known requester (the iommufd-probe helper) asks IOMMU_HWPT_ALLOC for flags
 * 0x0 and 0x4 (FAULT_ID_VALID: refused in iommufd itself, so even a host whose
 * IOMMU grants nothing answers it) on a bound device, and the probes must read
 * back exactly those requests and answers.
 *
 * Three outcomes, and the tests treat them differently:
 * - ok: each kernel-side comparison runs;
 * - unavailable (no root, no tracefs, a kernel that refuses the probe
 *   definitions, no device to check with): each comparison is a skip with
 *   this exact reason, counted in the summary;
 * - broken (the probes were set but read something else): a harness bug on
 *   this kernel, so the self-check test fails with the detail.
 */
export type KernelAnswers =
  | { ok: true; session: KprobeSession; detail: string }
  | { ok: false; broken: boolean; reason: string };

/** The task name (comm) of the helper that asks the kernel directly (images/tools/iommufd-probe.c). */
export const DIRECT_TASK = 'iommufd-probe';

/** The self-check's requests; 0x4 with fault_id 0 is ENOENT (or EOPNOTSUPP) from iommufd on any IOMMU. */
export const SELF_CHECK_FLAGS = [0x0, 0x4];

export async function openKernelAnswers(selfCheckCdev: string | undefined): Promise<KernelAnswers> {
  const why = KprobeSession.unavailableReason();
  if (why) return { ok: false, broken: false, reason: `kernel answers unavailable: ${why}` };
  let session: KprobeSession;
  try {
    session = KprobeSession.start();
  } catch (e) {
    return { ok: false, broken: false, reason: `kernel answers unavailable: ${(e as Error).message}` };
  }
  if (!selfCheckCdev) {
    session.stop();
    return { ok: false, broken: false, reason: 'kernel answers unverified: no device bound to vfio-pci to run the kprobe self-check with' };
  }
  const fired = await probeHwptAlloc(selfCheckCdev, SELF_CHECK_FLAGS);
  if (!fired.ok) {
    session.stop();
    return { ok: false, broken: !fired.unavailable, reason: `kprobe self-check could not ask the kernel through ${selfCheckCdev}: ${fired.reason}` };
  }
  const requests = fired.value.results.map((r) => ({
    flags: r.flags,
    devId: fired.value.devId,
    ptId: fired.value.ioasId,
    ret: r.ok ? 0 : errnoValue(r.errno ?? 'EIO'),
  }));
  const check = compareSelfCheck(requests, session.collect(), DIRECT_TASK);
  session.clear();
  if (!check.ok) {
    session.stop();
    return { ok: false, broken: true, reason: check.detail };
  }
  return { ok: true, session, detail: check.detail };
}
