import type { DeviceSpec } from './argv.js';

/**
 * PCIe root ports for q35/virt: one per slot, each its own chassis/slot pair
 * so that native PCIe hot-plug (pciehp) can address it. Ids are rp0, rp1, ...
 */
export function rootPorts(count: number, first = 0): DeviceSpec[] {
  return Array.from({ length: count }, (_, i) => {
    const n = first + i;
    return { driver: 'pcie-root-port', id: `rp${n}`, chassis: n + 1, slot: n + 1, bus: 'pcie.0', addr: `0x${(n + 2).toString(16)}.0` };
  });
}

/**
 * q35 defaults to ACPI hot-plug even for PCIe root ports: device_del then
 * waits for a guest to eject, and with no guest running (-S) DEVICE_DELETED
 * never comes. With this global the root ports use native PCIe hot-plug,
 * whose unplug completes in QEMU alone (facts sheet §9).
 */
export const NATIVE_PCIE_HOTPLUG = { driver: 'ICH9-LPC', property: 'acpi-pci-hotplug-with-bridge-support', value: false } as const;
