import { QmpCommandError, type DeviceProperty } from '../qmp/client.js';
import { findQemu, qemuVersion, type Arch, type QemuBinary, type QemuVersion } from '../qemu/binary.js';
import { Machine } from '../qemu/machine.js';
import { FEATURES_BY_DRIVER } from './features.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** What one QEMU binary offers, read from the binary itself. */
export interface QemuProbe {
  binary: QemuBinary;
  version: QemuVersion;
  /** device-list-properties of each vIOMMU driver the binary has. */
  drivers: Record<string, DeviceProperty[]>;
}

const cache = new Map<string, Promise<QemuProbe>>();

/**
 * Asks the QEMU at hand (a `-machine none -S` instance, ~0.2 s) which vIOMMU
 * devices and properties it has. Read once per binary per process.
 */
export function probeQemu(binary: QemuBinary): Promise<QemuProbe> {
  let p = cache.get(binary.path);
  if (!p) {
    p = doProbe(binary);
    cache.set(binary.path, p);
    p.catch(() => cache.delete(binary.path));
  }
  return p;
}

export function probeArch(arch: Arch): Promise<QemuProbe> {
  return probeQemu(findQemu(arch));
}

async function doProbe(binary: QemuBinary): Promise<QemuProbe> {
  const version = await qemuVersion(binary);
  const m = await Machine.launch(
    { arch: binary.arch, machine: { type: 'none' }, paused: true },
    { binary, name: 'probe', artifactsDir: mkdtempSync(join(tmpdir(), 'harness-probe-')) },
  );
  try {
    const drivers: Record<string, DeviceProperty[]> = {};
    for (const driver of Object.keys(FEATURES_BY_DRIVER)) {
      try {
        drivers[driver] = await m.qmp.deviceListProperties(driver);
      } catch (e) {
        if (!(e instanceof QmpCommandError)) throw e; // "Device 'x' not found": this binary lacks it
      }
    }
    return { binary, version, drivers };
  } finally {
    await m.shutdown();
  }
}
