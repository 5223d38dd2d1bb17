/**
 * What the host kernel shows of its PCI devices, IOMMUs, iommufd and VFIO in
 * sysfs and /dev. Every reader takes the roots it reads from, so unit tests
 * run on fake trees in a tmp folder (tests/fixtures/host/fake-sysfs.ts) and
 * nothing here ever writes.
 */
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseHexRegister } from '../guest/vtd-regs.js';
import { normalizeBdf } from './profile.js';

export interface HostPaths {
  sys: string;
  dev: string;
  proc: string;
}

export const REAL_HOST: Readonly<HostPaths> = { sys: '/sys', dev: '/dev', proc: '/proc' };

export function hostPaths(p: Partial<HostPaths> = {}): HostPaths {
  return { ...REAL_HOST, ...p };
}

/** sys, dev and proc below one folder: how fake hosts are laid out. */
export function hostPathsUnder(root: string): HostPaths {
  return { sys: join(root, 'sys'), dev: join(root, 'dev'), proc: join(root, 'proc') };
}

export function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function readLinkName(path: string): string | undefined {
  try {
    return basename(readlinkSync(path));
  } catch {
    return undefined;
  }
}

export function listDir(path: string): string[] {
  try {
    return readdirSync(path).sort();
  } catch {
    return [];
  }
}

export const pciDevicesDir = (p: HostPaths): string => join(p.sys, 'bus', 'pci', 'devices');
export const pciDriversDir = (p: HostPaths): string => join(p.sys, 'bus', 'pci', 'drivers');
export const pciDevicePath = (p: HostPaths, bdf: string): string => join(pciDevicesDir(p), bdf);

export function listPciDevices(p: HostPaths): string[] {
  return listDir(pciDevicesDir(p)).filter((n) => normalizeBdf(n) === n);
}

export function pciDriverLoaded(p: HostPaths, driver: string): boolean {
  return existsSync(join(pciDriversDir(p), driver));
}

export interface PciDevice {
  bdf: string;
  /** The device's own folder below /sys/devices (symlinks resolved). */
  path: string;
  vendor: number;
  device: number;
  /** 24-bit class code (0x020000: Ethernet). */
  classCode: number;
  driver?: string;
  /** driver_override, when set. */
  driverOverride?: string;
  iommuGroup?: number;
  /** Every device in the IOMMU group, this one included. */
  groupMembers: string[];
  /** The IOMMU instance (/sys/class/iommu name) that translates for it. */
  iommu?: string;
  /** vfioN when bound to a VFIO driver with cdev support. */
  vfioDev?: string;
  /** /dev/vfio/devices/vfioN (below the dev root), when vfioDev is set. */
  cdev?: string;
  /** The upstream bridge or port, when the device is below one. */
  parent?: string;
  isBridge: boolean;
}

const num = (s: string | undefined): number => (s === undefined ? NaN : parseInt(s, 16));

/** The device, or undefined when no such device exists. */
export function readPciDevice(p: HostPaths, bdf: string): PciDevice | undefined {
  const link = pciDevicePath(p, bdf);
  let path: string;
  try {
    path = realpathSync(link);
  } catch {
    return undefined;
  }
  const groupText = readLinkName(join(path, 'iommu_group'));
  const iommuGroup = groupText === undefined ? undefined : Number(groupText);
  const groupMembers = iommuGroup === undefined ? [] : listDir(join(p.sys, 'kernel', 'iommu_groups', String(iommuGroup), 'devices'));
  const override = readText(join(path, 'driver_override'));
  const vfioDev = listDir(join(path, 'vfio-dev')).find((n) => /^vfio\d+$/.test(n));
  const parentName = basename(join(path, '..'));
  const classCode = num(readText(join(path, 'class')));
  return {
    bdf,
    path,
    vendor: num(readText(join(path, 'vendor'))),
    device: num(readText(join(path, 'device'))),
    classCode,
    ...(readLinkName(join(path, 'driver')) !== undefined && { driver: readLinkName(join(path, 'driver'))! }),
    ...(override && override !== '(null)' && { driverOverride: override }),
    ...(iommuGroup !== undefined && { iommuGroup }),
    groupMembers,
    ...(readLinkName(join(path, 'iommu')) !== undefined && { iommu: readLinkName(join(path, 'iommu'))! }),
    ...(vfioDev && { vfioDev, cdev: join(p.dev, 'vfio', 'devices', vfioDev) }),
    ...(normalizeBdf(parentName) === parentName && { parent: parentName }),
    isBridge: classCode >> 8 === 0x0604,
  };
}

/** The config space as sysfs gives this reader (64 bytes unless root). */
export function readPciConfig(p: HostPaths, bdf: string): Buffer | undefined {
  try {
    return readFileSync(join(pciDevicePath(p, bdf), 'config'));
  } catch {
    return undefined;
  }
}

/**
 * Class devices (block, net, ...) that sit below a device folder: a disk on
 * an NVMe or AHCI controller, a NIC's interfaces, virtio's children.
 */
export function classDevicesUnder(p: HostPaths, cls: string, devicePath: string): { name: string; path: string }[] {
  const out: { name: string; path: string }[] = [];
  const prefix = devicePath.endsWith('/') ? devicePath : `${devicePath}/`;
  for (const name of listDir(join(p.sys, 'class', cls))) {
    try {
      const path = realpathSync(join(p.sys, 'class', cls, name));
      if (path.startsWith(prefix)) out.push({ name, path });
    } catch {
      // a class link whose target vanished while we looked
    }
  }
  return out;
}

export type IommuKind = 'vtd' | 'smmuv3' | 'amd' | 'virtio' | 'unknown';

export interface IommuInstance {
  name: string;
  kind: IommuKind;
  /** Devices it translates for (their /sys/class/iommu/NAME/devices entries). */
  devices: string[];
  /** VT-d capability registers, from intel-iommu/{cap,ecap}. */
  vtd?: { cap: bigint; ecap: bigint };
  /** Why a register could not be read, when it could not. */
  problems: string[];
}

/** /sys/class/iommu: the IOMMU instances the kernel registered (none when the IOMMU is off). */
export function listIommus(p: HostPaths): IommuInstance[] {
  const base = join(p.sys, 'class', 'iommu');
  return listDir(base).map((name) => {
    const dir = join(base, name);
    const problems: string[] = [];
    const devices = listDir(join(dir, 'devices'));
    let kind: IommuKind = 'unknown';
    let vtd: IommuInstance['vtd'];
    if (existsSync(join(dir, 'intel-iommu'))) {
      kind = 'vtd';
      const cap = readText(join(dir, 'intel-iommu', 'cap'));
      const ecap = readText(join(dir, 'intel-iommu', 'ecap'));
      try {
        if (cap === undefined || ecap === undefined) throw new Error(`${dir}/intel-iommu/cap or ecap is not readable`);
        vtd = { cap: parseHexRegister(cap, `${name} cap`), ecap: parseHexRegister(ecap, `${name} ecap`) };
      } catch (e) {
        problems.push((e as Error).message);
      }
    } else if (existsSync(join(dir, 'amd-iommu'))) kind = 'amd';
    else if (/^smmu3\./.test(name)) kind = 'smmuv3';
    else if (/virtio/i.test(name)) kind = 'virtio';
    return { name, kind, devices, ...(vtd && { vtd }), problems };
  });
}

export interface IommufdVfioState {
  /** /dev/iommu exists (CONFIG_IOMMUFD). */
  devIommu: boolean;
  /** /dev/vfio/devices exists (CONFIG_VFIO_DEVICE_CDEV, vfio loaded). */
  devVfioDevices: boolean;
  /** /sys/class/vfio-dev exists: the cdev class, present once vfio is loaded with cdev support. */
  classVfioDev: boolean;
  vfioPciDriver: boolean;
  /** Legacy /dev/vfio/vfio container (only informative). */
  devVfioContainer: boolean;
}

export function iommufdVfioState(p: HostPaths): IommufdVfioState {
  const isDir = (q: string): boolean => {
    try {
      return statSync(q).isDirectory();
    } catch {
      return false;
    }
  };
  return {
    devIommu: existsSync(join(p.dev, 'iommu')),
    devVfioDevices: isDir(join(p.dev, 'vfio', 'devices')),
    classVfioDev: isDir(join(p.sys, 'class', 'vfio-dev')),
    vfioPciDriver: pciDriverLoaded(p, 'vfio-pci'),
    devVfioContainer: existsSync(join(p.dev, 'vfio', 'vfio')),
  };
}
