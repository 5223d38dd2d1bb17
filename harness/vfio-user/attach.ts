/**
 * Servers for the vfio-user devices of one machine. QEMU connects to a
 * vfio-user socket while it realizes the device, so the servers must listen
 * before launch: they get their own private directory (0700), which close()
 * removes together with the sockets.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { DeviceSpec } from '../qemu/argv.js';
import type { DeviceDescription } from './description.js';
import { loadDeviceDescription } from './devices/index.js';
import { startVfioUserServer, type VfioUserServer } from './server.js';
import { runTmpSubdir } from '../util/run-tmp.js';

export interface AttachedDevice {
  /** The QEMU device id (also the socket's name). */
  id: string;
  server: VfioUserServer;
  /** The -device for QEMU: vfio-user-pci on `bus`, connected to the server. */
  spec: DeviceSpec;
}

export class VfioUserDevices {
  private readonly attached: AttachedDevice[] = [];
  private dir: string | undefined;

  /** `log` gets every server's log lines (each prefixed with the device name). */
  constructor(private readonly log?: (line: string) => void) {}

  /**
   * Starts a server for `device` (a description, or a built-in name or JSON
   * path) and returns the -device spec that connects QEMU to it.
   */
  async add(device: DeviceDescription | string, opts: { id: string; bus: string }): Promise<AttachedDevice> {
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(opts.id)) throw new Error(`vfio-user device id ${JSON.stringify(opts.id)} is not a valid QEMU id`);
    if (this.attached.some((a) => a.id === opts.id)) throw new Error(`vfio-user device id ${opts.id} is already in use`);
    const description = typeof device === 'string' ? loadDeviceDescription(device) : device;
    this.dir ??= runTmpSubdir('harness-vfio-user-');
    const socketPath = join(this.dir, `${opts.id}.sock`);
    const server = await startVfioUserServer({ socketPath, device: description, ...(this.log ? { log: this.log } : {}) });
    const spec: DeviceSpec = { driver: 'vfio-user-pci', id: opts.id, bus: opts.bus, socket: { type: 'unix', path: socketPath } };
    const a = { id: opts.id, server, spec };
    this.attached.push(a);
    return a;
  }

  get devices(): readonly AttachedDevice[] {
    return this.attached;
  }

  specs(): DeviceSpec[] {
    return this.attached.map((a) => a.spec);
  }

  get(id: string): AttachedDevice {
    const a = this.attached.find((x) => x.id === id);
    if (!a) throw new Error(`no vfio-user device ${id} (have: ${this.attached.map((x) => x.id).join(', ') || 'none'})`);
    return a;
  }

  /**
   * Closes every server and removes the private directory. Idempotent. Call it
   * after QEMU has exited: with its server gone QEMU 11.1.3 aborts at the next
   * DMA map ("vfio: DMA mapping failed, unable to continue").
   */
  async close(): Promise<void> {
    for (const a of this.attached.splice(0)) await a.server.close();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
  }
}
