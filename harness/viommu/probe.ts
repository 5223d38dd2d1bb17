import { QmpCommandError, type DeviceProperty } from '../qmp/client.js';
import { findQemu, qemuVersion, type Arch, type QemuBinary, type QemuVersion } from '../qemu/binary.js';
import { readFeatures, type QemuFeatures } from '../qemu/capabilities.js';
import { Machine } from '../qemu/machine.js';
import { FEATURES_BY_DRIVER } from './features.js';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runArtifactsDir } from '../util/paths.js';

/** What one QEMU binary offers, read from the binary itself. */
export interface QemuProbe {
  binary: QemuBinary;
  version: QemuVersion;
  /** device-list-properties of each vIOMMU driver the binary takes as a -device. */
  drivers: Record<string, DeviceProperty[]>;
  /** Devices, accelerators, -object types, option parameters, QMP commands. */
  features: QemuFeatures;
}

const cache = new Map<string, Promise<QemuProbe>>();

/**
 * Asks the QEMU at hand (a `-machine none -S` instance, ~0.2 s) what it has:
 * vIOMMU devices and their properties, and the features tests need.
 * Read once per binary per process; a binary rebuilt in place (a git tree
 * between bisection steps) is a new binary.
 */
export function probeQemu(binary: QemuBinary): Promise<QemuProbe> {
  const st = statSync(binary.path);
  const key = `${binary.path}\0${st.mtimeMs}\0${st.size}`;
  let p = cache.get(key);
  if (!p) {
    p = doProbe(binary);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return p;
}

export function probeArch(arch: Arch): Promise<QemuProbe> {
  return probeQemu(findQemu(arch));
}

async function doProbe(binary: QemuBinary): Promise<QemuProbe> {
  const version = await qemuVersion(binary);
  // The probe's artifacts matter only when it fails (the LaunchError names
  // the folder, kept in the run's artifacts); a probe that worked leaves nothing behind.
  mkdirSync(join(runArtifactsDir(), 'probes'), { recursive: true });
  const artifactsDir = mkdtempSync(join(runArtifactsDir(), 'probes', 'probe-'));
  const m = await Machine.launch({ arch: binary.arch, machine: { type: 'none' }, paused: true }, { binary, name: 'probe', artifactsDir });
  try {
    const features = await readFeatures(m.qmp, binary);
    const drivers: Record<string, DeviceProperty[]> = {};
    // Only a vIOMMU -device takes counts (10.0's arm-smmuv3 is machine-made).
    for (const driver of Object.keys(FEATURES_BY_DRIVER).filter((d) => features.devices.has(d))) {
      try {
        drivers[driver] = await m.qmp.deviceListProperties(driver);
      } catch (e) {
        if (!(e instanceof QmpCommandError)) throw e; // "Device 'x' not found": this binary lacks it
      }
    }
    const exit = await m.shutdown();
    if (exit.code === 0) rmSync(artifactsDir, { recursive: true, force: true });
    return { binary, version, drivers, features };
  } finally {
    await m.shutdown();
  }
}
