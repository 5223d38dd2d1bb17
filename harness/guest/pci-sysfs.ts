import type { Agent } from './agent.js';
import { decodePasidCap, walkPciCaps, type PasidCap, type PciCapWalk } from '../pci/caps.js';

/** One PCI function as the guest's sysfs shows it. */
export interface GuestPciFunction {
  /** "0000:01:00.0". */
  bdf: string;
  vendor: number;
  device: number;
  class: number;
  /** Bound driver, if any (vfio-pci, pcieport, virtio-pci, …). */
  driver: string | undefined;
  /** IOMMU group number, if the function is in one. */
  iommuGroup: number | undefined;
}

const LIST = [
  'for d in /sys/bus/pci/devices/*; do',
  '  drv=-; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")',
  '  grp=-; [ -e "$d/iommu_group" ] && grp=$(basename "$(readlink "$d/iommu_group")")',
  '  echo "${d##*/} $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class") $drv $grp"',
  'done',
].join('\n');

/** Parses LIST's output (one function a line); exported for tests. */
export function parsePciList(text: string): GuestPciFunction[] {
  return text
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(' ');
      if (f.length !== 6) throw new Error(`guest PCI list: expected 6 fields, got ${JSON.stringify(line)}`);
      const [bdf, vendor, device, cls, driver, group] = f as [string, string, string, string, string, string];
      return {
        bdf,
        vendor: Number(vendor),
        device: Number(device),
        class: Number(cls),
        driver: driver === '-' ? undefined : driver,
        iommuGroup: group === '-' ? undefined : Number(group),
      };
    });
}

export async function listPciFunctions(agent: Agent): Promise<GuestPciFunction[]> {
  return parsePciList(await agent.check(LIST));
}

/**
 * The function's config space from sysfs. The agent runs as root, so a PCIe
 * function gives all 4096 bytes; fewer means no extended space (conventional
 * PCI, or no ECAM in the guest kernel).
 */
export async function readPciConfig(agent: Agent, bdf: string): Promise<Buffer> {
  if (!/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(bdf)) throw new Error(`not a PCI address: ${JSON.stringify(bdf)} (want 0000:01:00.0)`);
  return agent.readFile(`/sys/bus/pci/devices/${bdf}/config`);
}

export async function walkGuestPciCaps(agent: Agent, bdf: string): Promise<PciCapWalk & { config: Buffer }> {
  const config = await readPciConfig(agent, bdf);
  return { ...walkPciCaps(config), config };
}

/** The PASID capability the guest sees on `bdf` (e.g. one vfio-pci synthesized), or undefined. */
export async function guestPasidCap(agent: Agent, bdf: string): Promise<PasidCap | undefined> {
  const w = await walkGuestPciCaps(agent, bdf);
  return decodePasidCap(w.config, w);
}
