import { accessSync, constants, readFileSync } from 'node:fs';
import { arch as hostArch } from 'node:process';
import type { Arch } from '../qemu/binary.js';

const nodeToQemuArch: Record<string, Arch> = { x64: 'x86_64', arm64: 'aarch64' };

/** This host's architecture in QEMU's words. */
export function hostQemuArch(): Arch | undefined {
  return nodeToQemuArch[hostArch];
}

/**
 * Why KVM cannot run a guest of `arch` here, or undefined when it can be
 * tried. KVM needs the guest's architecture to be the host's, a usable
 * /dev/kvm, and on x86 the CPU's virtualization extensions: a /dev/kvm that
 * opens on a CPU without vmx/svm (as on this project's build machines) lets
 * QEMU start, then stops the guest with "KVM internal error ... emulation
 * failure" at its first cmpxchg16b.
 */
export function kvmUnavailableReason(arch: Arch, devKvm = '/dev/kvm', cpuinfo = '/proc/cpuinfo'): string | undefined {
  const host = hostQemuArch();
  if (host !== arch) return `KVM for ${arch} needs an ${arch} host; this host is ${host ?? hostArch}`;
  try {
    accessSync(devKvm, constants.R_OK | constants.W_OK);
  } catch {
    return `no usable ${devKvm}`;
  }
  if (process.env.HARNESS_NO_KVM === '1') return 'KVM disabled by HARNESS_NO_KVM=1';
  if (arch === 'x86_64') {
    let flags = '';
    try {
      flags = /^flags\s*:(.*)$/m.exec(readFileSync(cpuinfo, 'utf8'))?.[1] ?? '';
    } catch {
      /* no /proc/cpuinfo: leave the decision to QEMU */
      return undefined;
    }
    if (!/\b(vmx|svm)\b/.test(flags)) return `${devKvm} exists but the CPU has no vmx/svm flag (no hardware virtualization exposed to this host)`;
  }
  return undefined;
}
