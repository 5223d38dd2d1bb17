/**
 * arm-smmuv3 accel=on with QEMU's default NIC left on (no -nodefaults, no
 * `-nic none`): QEMU aborts in smmuv3_accel_find_add_as ("code should not be
 * reached", SIGABRT) instead of refusing the emulated endpoint as it refuses
 * one given with -device ("Emulated endpoint devices are not allowed when
 * using arm-smmuv3,accel=on"). Reaching it needs KVM (accel=on refuses TCG)
 * and explicit (non-auto) SMMUv3 properties: with 'auto' ones QEMU first
 * wants a cold-plugged VFIO device. Seen in 11.1.3 in the arm64 virtual lab's
 * L1 (Linux 7.2.13, KVM with VHE).
 */
import { execa } from 'execa';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { l2Firmware } from '../lab/l2.js';
import { findQemu, qemuVersion } from '../qemu/binary.js';
import { shellQuote } from '../util/shell.js';
import type { Reproducer, ReproOptions, ReproOutcome } from './types.js';

/** Explicit properties, so that no VFIO device is needed to realize the SMMU. */
const SMMU = 'arm-smmuv3,primary-bus=pcie.0,accel=on,ats=off,ril=on,ssidsize=0,oas=44';
/** How long a QEMU that did not fail gets to prove it came up (it stays paused: -S). */
const ALIVE_MS = 5000;

interface Try {
  args: string[];
  cmdline: string;
  /** exit status, or the signal that ended it, or 'alive' when it was still running after ALIVE_MS. */
  end: string;
  stderr: string;
}

async function attempt(o: ReproOptions, name: string, extra: string[]): Promise<Try> {
  const bin = findQemu('aarch64', o.qemuPath ? { path: o.qemuPath } : {});
  const args = [
    ...bin.baseArgs,
    ...['-accel', 'kvm', '-M', 'virt,gic-version=3', '-cpu', 'host', '-m', '128M', '-display', 'none', '-S', '-bios', l2Firmware()],
    ...extra,
  ];
  const child = execa(bin.command, [...bin.prefixArgs, ...args], { env: bin.env, reject: false, timeout: ALIVE_MS, stdin: 'ignore' });
  const r = await child;
  const end = r.timedOut ? 'alive' : r.signal ? r.signal : `exit ${r.exitCode}`;
  writeFileSync(join(o.artifactsDir, `${name}.stderr.log`), r.stderr);
  return { args, cmdline: [bin.path, ...args].map(shellQuote).join(' '), end, stderr: r.stderr.trim() };
}

async function run(o: ReproOptions): Promise<ReproOutcome> {
  if (o.arch !== 'aarch64') throw new Error(`--arch ${o.arch}: this reproducer needs qemu-system-aarch64 (--arch aarch64) on an arm64 host with KVM`);
  if (!existsSync('/dev/kvm')) throw new Error('no /dev/kvm here: arm-smmuv3 accel=on needs KVM (run it on an arm64 host, e.g. the arm64 virtual lab L1)');
  mkdirSync(o.artifactsDir, { recursive: true });
  const bin = findQemu('aarch64', o.qemuPath ? { path: o.qemuPath } : {});
  const version = await qemuVersion(bin);
  const nic = await attempt(o, 'default-nic', ['-device', SMMU]);
  const none = await attempt(o, 'nic-none', ['-nic', 'none', '-device', SMMU]);
  const e1000e = await attempt(o, 'explicit-e1000e', ['-nodefaults', '-device', SMMU, '-device', 'e1000e,romfile=']);
  const aborted = nic.end === 'SIGABRT' && nic.stderr.includes('smmuv3_accel_find_add_as: code should not be reached');
  return {
    present: aborted,
    qemu: { path: bin.path, version: version.text },
    cmdline: nic.cmdline,
    steps: [`launched with the default NIC: ${nic.end}`, `the same with -nic none: ${none.end}`, `-nodefaults and an e1000e given with -device: ${e1000e.end}`],
    expected:
      "a refusal of the default NIC like the one for an emulated endpoint given with -device ('Emulated endpoint devices are not allowed when using arm-smmuv3,accel=on'), exit 1",
    seen: `${nic.end}: ${nic.stderr.split('\n').filter(Boolean).at(-1) ?? '(no output)'}`,
    control: `with -nic none QEMU came up (${none.end}); an e1000e given with -device is refused: ${e1000e.end}, ${e1000e.stderr.split('\n').at(-1) ?? ''}`,
    artifactsDir: o.artifactsDir,
  };
}

export const smmuv3DefaultNic: Reproducer = {
  name: 'smmuv3-accel-default-nic',
  summary: "arm-smmuv3 accel=on with QEMU's default NIC: SIGABRT in smmuv3_accel_find_add_as instead of the emulated-endpoint refusal",
  found: 'the arm64 virtual lab (issue 10), QEMU 11.1.3 under KVM in an arm64 L1',
  run,
};
