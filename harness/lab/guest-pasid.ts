import type { Agent } from '../guest/agent.js';
import { findExtCap } from '../pci/caps.js';
import { listPciFunctions, walkGuestPciCaps } from '../guest/pci-sysfs.js';

/**
 * The guest's PCI functions that show a PASID extended capability, with its
 * offset: vfio-pci synthesizes one (default offset 0xff8, facts §3) when the
 * vIOMMU wants PASID and the host device has it.
 */
export async function guestPciFunctionsWithPasid(agent: Agent): Promise<Array<{ bdf: string; offset: number }>> {
  const out: Array<{ bdf: string; offset: number }> = [];
  for (const f of await listPciFunctions(agent)) {
    const walk = await walkGuestPciCaps(agent, f.bdf);
    const cap = findExtCap(walk, 'PASID');
    if (cap) out.push({ bdf: f.bdf, offset: cap.offset });
  }
  return out;
}
