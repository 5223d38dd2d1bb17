import { findQemu, qemuVersion, type Arch, type QemuBinary } from '../qemu/binary.js';
import { skipBecause } from '../report/skip.js';

/**
 * The QEMU for `arch`, or a skip naming why there is none. Used in before()
 * hooks: a missing QEMU is a skip with a reason, never a pass.
 */
export async function requireQemu(ctx: Mocha.Context, arch: Arch): Promise<QemuBinary> {
  let bin: QemuBinary;
  try {
    bin = findQemu(arch);
    await qemuVersion(bin);
  } catch (e) {
    return skipBecause(ctx, `no usable QEMU for ${arch}: ${(e as Error).message}`);
  }
  return bin;
}
