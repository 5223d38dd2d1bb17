/**
 * The PCI extended capabilities the scenarios depend on (PASID, ATS, PRI)
 * and the PCIe port type, from a function's configuration space as sysfs
 * gives it. The list walk itself is ./caps.ts; this adds PRI
 * and the summary doctor prints.
 *
 * sysfs gives non-root readers only the first 64 bytes: then nothing past
 * the header is visible and the summary says so instead of "no PASID".
 */
import { decodeAtsCap, decodePasidCap, findExtCap, findStdCap, walkPciCaps, type AtsCap, type PasidCap, type PciCapWalk } from './caps.js';

export const PCI_EXT_CAP_ATS = 0x0f;
export const PCI_EXT_CAP_PRI = 0x13;
export const PCI_EXT_CAP_PASID = 0x1b;

/** The Page Request Interface capability (PCIe 6.0 §10.5.2). */
export interface PriCap {
  offset: number;
  enabled: boolean;
  /** Stopped, so no page request is outstanding. */
  stopped: boolean;
  /** PRG Response PASID Required. */
  prgResponsePasidRequired: boolean;
  outstandingCapacity: number;
  outstandingAllocation: number;
}

export function decodePriCap(config: Buffer, walk: PciCapWalk = walkPciCaps(config)): PriCap | undefined {
  const c = findExtCap(walk, PCI_EXT_CAP_PRI);
  if (!c || c.offset + 16 > config.length) return undefined;
  const ctl = config.readUInt16LE(c.offset + 4);
  const status = config.readUInt16LE(c.offset + 6);
  return {
    offset: c.offset,
    enabled: (ctl & 0x1) !== 0,
    stopped: (status & 0x100) !== 0,
    prgResponsePasidRequired: (status & 0x8000) !== 0,
    outstandingCapacity: config.readUInt32LE(c.offset + 8),
    outstandingAllocation: config.readUInt32LE(c.offset + 12),
  };
}

/** Device/Port Type of the PCI Express capability (PCIe 6.0 §7.5.3.2). */
export const PCIE_PORT_TYPES: Readonly<Record<number, string>> = {
  0x0: 'endpoint',
  0x1: 'legacy-endpoint',
  0x9: 'rc-integrated-endpoint',
  0xa: 'rc-event-collector',
  0x4: 'root-port',
  0x5: 'upstream-port',
  0x6: 'downstream-port',
  0x7: 'pcie-to-pci-bridge',
  0x8: 'pci-to-pcie-bridge',
};

export interface ExtCapsSummary {
  /** The function has a PCI Express capability; conventional PCI when false. */
  pcie: boolean;
  pcieType?: string;
  /** False when the config file stops before 0x100 (not root, or conventional PCI). */
  extendedVisible: boolean;
  configBytes: number;
  pasid?: Pick<PasidCap, 'offset' | 'maxPasidWidth' | 'execPermissionSupported' | 'privilegedModeSupported' | 'enabled'>;
  ats?: Pick<AtsCap, 'offset' | 'enabled' | 'invalidateQueueDepth'>;
  pri?: Pick<PriCap, 'offset' | 'enabled' | 'outstandingCapacity'>;
  /** Every extended capability by name, in list order. */
  extended: string[];
  problems: string[];
}

export function summarizeExtCaps(config: Buffer): ExtCapsSummary {
  const walk = walkPciCaps(config);
  const exp = findStdCap(walk, 0x10);
  const pcieType = exp && exp.offset + 4 <= config.length ? (config.readUInt16LE(exp.offset + 2) >> 4) & 0xf : undefined;
  const pasid = decodePasidCap(config, walk);
  const ats = decodeAtsCap(config, walk);
  const pri = decodePriCap(config, walk);
  return {
    pcie: exp !== undefined,
    ...(pcieType !== undefined && { pcieType: PCIE_PORT_TYPES[pcieType] ?? `type-${pcieType}` }),
    extendedVisible: walk.extendedVisible,
    configBytes: config.length,
    ...(pasid && {
      pasid: {
        offset: pasid.offset,
        maxPasidWidth: pasid.maxPasidWidth,
        execPermissionSupported: pasid.execPermissionSupported,
        privilegedModeSupported: pasid.privilegedModeSupported,
        enabled: pasid.enabled,
      },
    }),
    ...(ats && { ats: { offset: ats.offset, enabled: ats.enabled, invalidateQueueDepth: ats.invalidateQueueDepth } }),
    ...(pri && { pri: { offset: pri.offset, enabled: pri.enabled, outstandingCapacity: pri.outstandingCapacity } }),
    extended: walk.extended.map((c) => c.name),
    problems: walk.problems,
  };
}

/** Why the PASID question cannot be answered from this config space, or undefined when it can. */
export function extCapsUnreadableReason(s: ExtCapsSummary): string | undefined {
  if (s.extendedVisible) return undefined;
  if (s.configBytes <= 64) return `only ${s.configBytes} bytes of config space are readable (reading past the header needs root)`;
  if (!s.pcie) return undefined; // conventional PCI: no extended space, so no PASID for certain
  return `extended config space is not visible (${s.configBytes} bytes; no ECAM/MMCONFIG?)`;
}
