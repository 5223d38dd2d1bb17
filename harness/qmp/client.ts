import { QmpCommandError } from './errors.js';

export { QmpCommandError, QmpDisconnectedError, QmpProtocolError, QmpNegotiationError } from './errors.js';
import type { EventFilter, EventListener, QmpEvent } from './events.js';
import { QmpConnection, type ConnectionOptions, type ExecuteOptions } from './protocol.js';
import { connectTcp, connectUnix, type Transport } from './transport.js';

export interface PciDevice {
  bus: number;
  slot: number;
  function: number;
  class_info: { class: number; desc?: string };
  id: { vendor: number; device: number; subsystem?: number; 'subsystem-vendor'?: number };
  qdev_id: string;
  regions: Array<{ bar: number; type: string; address: number; size: number }>;
  pci_bridge?: { bus: { number: number; secondary: number; subordinate: number }; devices?: PciDevice[] };
}

export interface PciBus {
  bus: number;
  devices: PciDevice[];
}

export interface DeviceProperty {
  name: string;
  type: string;
  description?: string;
  'default-value'?: unknown;
}

export type DeviceArgs = { driver: string; id?: string; bus?: string } & Record<string, unknown>;

/**
 * Typed QMP calls over a QmpConnection. Knows QEMU's commands, not sockets.
 * Anything not wrapped here is `execute(name, args)`.
 */
export class QmpClient {
  constructor(readonly conn: QmpConnection) {}

  static async connectUnix(path: string, opts: ConnectionOptions = {}): Promise<QmpClient> {
    return QmpClient.over(await connectUnix(path), opts);
  }

  static async connectTcp(host: string, port: number, opts: ConnectionOptions = {}): Promise<QmpClient> {
    return QmpClient.over(await connectTcp(host, port), opts);
  }

  static async over(transport: Transport, opts: ConnectionOptions = {}): Promise<QmpClient> {
    return new QmpClient(await QmpConnection.open(transport, opts));
  }

  get greeting() {
    return this.conn.greeting;
  }

  execute<T = unknown>(command: string, args?: object, opts?: ExecuteOptions): Promise<T> {
    return this.conn.execute<T>(command, args, opts);
  }

  listen(filter: EventFilter = {}, maxQueued?: number): EventListener {
    return this.conn.listen(filter, maxQueued);
  }

  close(): Promise<void> {
    return this.conn.close();
  }

  queryStatus(): Promise<{ running: boolean; status: string }> {
    return this.execute('query-status');
  }

  queryPci(): Promise<PciBus[]> {
    return this.execute('query-pci');
  }

  /** Every PCI device, bridges' children included, flattened. */
  async pciDevices(): Promise<PciDevice[]> {
    const walk = (ds: PciDevice[]): PciDevice[] => ds.flatMap((d) => [d, ...walk(d.pci_bridge?.devices ?? [])]);
    return (await this.queryPci()).flatMap((b) => walk(b.devices));
  }

  qomGet<T = unknown>(path: string, property: string): Promise<T> {
    return this.execute('qom-get', { path, property });
  }

  qomList(path: string): Promise<Array<{ name: string; type: string }>> {
    return this.execute('qom-list', { path });
  }

  deviceListProperties(typename: string): Promise<DeviceProperty[]> {
    return this.execute('device-list-properties', { typename });
  }

  deviceAdd(args: DeviceArgs, opts?: ExecuteOptions): Promise<void> {
    return this.execute('device_add', args, opts);
  }

  /**
   * device_del, then DEVICE_DELETED for that id. The listener is made before
   * the command, so an event that comes back fast is not missed; the wait
   * has its own deadline because completion needs the guest (ACPI) or the
   * hot-plug controller (native PCIe) to answer.
   */
  async deviceDel(id: string, timeoutMs = 10_000): Promise<QmpEvent> {
    const deleted = this.listen({ names: ['DEVICE_DELETED'], where: (e) => e.data.device === id });
    try {
      await this.execute('device_del', { id });
      return await deleted.next(timeoutMs);
    } finally {
      deleted.close();
    }
  }

  hmp(commandLine: string): Promise<string> {
    return this.execute('human-monitor-command', { 'command-line': commandLine });
  }

  traceEventSetState(name: string, enable: boolean): Promise<void> {
    return this.execute('trace-event-set-state', { name, enable });
  }

  traceEventGetState(name: string): Promise<Array<{ name: string; state: string; vcpu?: boolean }>> {
    return this.execute('trace-event-get-state', { name });
  }

  /** `quit`; QEMU may close the socket before or after answering, both are success. */
  async quit(timeoutMs = 5000): Promise<void> {
    try {
      await this.execute('quit', undefined, { timeoutMs });
    } catch (e) {
      if (e instanceof QmpCommandError) throw e;
      if (this.conn.isOpen) throw e;
    }
  }
}
