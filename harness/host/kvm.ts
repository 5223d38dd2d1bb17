import { accessSync, constants } from 'node:fs';
import { arch as hostArch } from 'node:process';
import type { Arch } from '../qemu/binary.js';

const nodeToQemuArch: Record<string, Arch> = { x64: 'x86_64', arm64: 'aarch64' };

/** This host's architecture in QEMU's words. */
export function hostQemuArch(): Arch | undefined {
  return nodeToQemuArch[hostArch];
}

/**
 * Why KVM cannot run a guest of `arch` here, or undefined when it can be
 * tried. KVM needs the guest's architecture to be the host's and a usable
 * /dev/kvm. (A /dev/kvm that opens can still fail to create a VM on a host
 * without hardware virtualization; launching with -accel kvm tells for sure.)
 */
export function kvmUnavailableReason(arch: Arch, devKvm = '/dev/kvm'): string | undefined {
  const host = hostQemuArch();
  if (host !== arch) return `KVM for ${arch} needs an ${arch} host; this host is ${host ?? hostArch}`;
  try {
    accessSync(devKvm, constants.R_OK | constants.W_OK);
  } catch {
    return `no usable ${devKvm}`;
  }
  if (process.env.HARNESS_NO_KVM === '1') return 'KVM disabled by HARNESS_NO_KVM=1';
  return undefined;
}
