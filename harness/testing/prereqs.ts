import { existsSync } from 'node:fs';
import { findQemu, qemuVersion, releaseQemuWrapper, type Arch, type QemuBinary } from '../qemu/binary.js';
import { lacking, type QemuNeed } from '../qemu/capabilities.js';
import { skipBecause } from '../report/skip.js';
import { QemuLacksError, resolveConfig, type ResolveOptions, type ViommuConfig } from '../viommu/configs.js';
import { probeQemu, type QemuProbe } from '../viommu/probe.js';

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

/**
 * Another Debian release's QEMU as `scripts/install-qemu.sh --release R`
 * installs it (scripts/bootstrap.sh installs trixie's), named by its bin/
 * wrapper as a user would name it; a skip saying how to install it if absent.
 */
export async function requireReleaseQemu(ctx: Mocha.Context, release: string, arch: Arch = 'x86_64'): Promise<QemuBinary> {
  const wrapper = releaseQemuWrapper(release, arch);
  if (!existsSync(wrapper)) {
    skipBecause(ctx, `${release}'s QEMU is not installed (${wrapper}): run scripts/install-qemu.sh --release ${release} (scripts/bootstrap.sh does)`);
  }
  const bin = findQemu(arch, { path: wrapper });
  await qemuVersion(bin);
  return bin;
}

/** "QEMU /path (QEMU emulator version 10.0.13 (...))": how skips and errors name a binary. */
export function qemuLabel(probe: QemuProbe): string {
  return `QEMU ${probe.binary.path} (${probe.version.text})`;
}

/**
 * The QEMU for `arch` and its probe, or a skip naming the binary, its version
 * and each need it does not meet (a device, an accelerator, an -object type,
 * an option parameter), as the binary itself reports them. A probe that
 * fails is an error, not a skip: the binary answered --version, so it ought
 * to start.
 */
export async function requireQemuFeatures(ctx: Mocha.Context, arch: Arch, ...needs: QemuNeed[]): Promise<QemuProbe> {
  const probe = await probeQemu(await requireQemu(ctx, arch));
  const missing = lacking(probe.features, needs);
  if (missing.length) skipBecause(ctx, `${qemuLabel(probe)} lacks ${missing.join(', ')}`);
  return probe;
}

/**
 * resolveConfig, with a vIOMMU device or feature this binary lacks
 * (QemuLacksError: the binary, its version, the names tried) as the test's
 * skip reason.
 * Anything else (an unknown driver, a bad config) still fails.
 */
export function resolveConfigOrSkip(ctx: Mocha.Context, config: ViommuConfig, probe: QemuProbe, opts: ResolveOptions = {}): ReturnType<typeof resolveConfig> {
  try {
    return resolveConfig(config, probe, opts);
  } catch (e) {
    if (e instanceof QemuLacksError) skipBecause(ctx, e.message);
    throw e;
  }
}
