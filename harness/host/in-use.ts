/**
 * Whether the host is using a PCI device: a disk below it that backs a
 * mounted filesystem or swap (directly, through a partition, or through a
 * holder such as dm/md), or a network interface below it that is up. Taking
 * such a device away from its driver would pull the floor from under the host.
 */
import { join } from 'node:path';
import { classDevicesUnder, listDir, readText, type HostPaths } from './sysfs.js';

export interface MountEntry {
  /** "major:minor" of st_dev (0:N for btrfs, overlay, tmpfs and other anonymous devices). */
  majMin: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** mountinfo's octal escapes (\040 for a space) back to characters. */
const unescapeOctal = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/**
 * /proc/PID/mountinfo (proc(5)): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
 * [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS. Lines that do not have that
 * shape are skipped.
 */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0 || !/^\d+:\d+$/.test(f[2] ?? '')) continue;
    out.push({ majMin: f[2]!, mountPoint: unescapeOctal(f[4]!), fsType: f[sep + 1] ?? '', source: unescapeOctal(f[sep + 2] ?? '') });
  }
  return out;
}

/** Swap areas from /proc/swaps, as device or file paths. */
export function parseSwaps(text: string): string[] {
  return text
    .split('\n')
    .slice(1)
    .map((l) => unescapeOctal(l.split(/\s+/)[0] ?? ''))
    .filter(Boolean);
}

interface BlockDev {
  name: string;
  majMin?: string;
  /** dm-N's mapper name, for sources like /dev/mapper/NAME. */
  dmName?: string;
  /** How it hangs off the PCI device, for messages: "nvme0n1 → dm-0". */
  via: string;
}

/**
 * The block devices a PCI device's disks reach: the disks themselves, their
 * partitions, and (recursively) whatever holds them.
 */
export function blockDevicesBelow(p: HostPaths, devicePath: string): BlockDev[] {
  const seen = new Map<string, BlockDev>();
  const visit = (name: string, via: string): void => {
    if (seen.has(name)) return;
    const dir = join(p.sys, 'class', 'block', name);
    const dmName = readText(join(dir, 'dm', 'name'));
    const majMin = readText(join(dir, 'dev'));
    seen.set(name, { name, via, ...(majMin && { majMin }), ...(dmName && { dmName }) });
    // Partitions are subfolders holding a "partition" file.
    for (const sub of listDir(dir)) if (readText(join(dir, sub, 'partition')) !== undefined) visit(sub, `${via} → ${sub}`);
    for (const h of listDir(join(dir, 'holders'))) visit(h, `${via} → ${h}`);
  };
  for (const { name } of classDevicesUnder(p, 'block', devicePath)) visit(name, name);
  return [...seen.values()];
}

/** Why the device must not be taken because of its disks, one line per use; [] when none. */
export function mountedBlockUses(p: HostPaths, devicePath: string): string[] {
  const blocks = blockDevicesBelow(p, devicePath);
  if (!blocks.length) return [];
  const mounts = parseMountinfo(readText(join(p.proc, 'self', 'mountinfo')) ?? '');
  const swaps = parseSwaps(readText(join(p.proc, 'swaps')) ?? '');
  const uses: string[] = [];
  for (const b of blocks) {
    const names = new Set([`/dev/${b.name}`, ...(b.dmName ? [`/dev/mapper/${b.dmName}`] : [])]);
    const hits = mounts.filter((m) => (b.majMin !== undefined && m.majMin === b.majMin) || names.has(m.source));
    const points = [...new Set(hits.map((m) => m.mountPoint))];
    if (points.length) uses.push(`block device ${b.via} (${b.majMin ?? '?'}) is mounted on ${points.join(', ')}`);
    for (const s of swaps) if (names.has(s)) uses.push(`block device ${b.via} is in use as swap (${s})`);
  }
  return uses;
}

const IFF_UP = 0x1;

/** Network interfaces below the device that are up (flags IFF_UP, or operstate up). */
export function upInterfaces(p: HostPaths, devicePath: string): string[] {
  const out: string[] = [];
  for (const { name, path } of classDevicesUnder(p, 'net', devicePath)) {
    const flags = parseInt(readText(join(path, 'flags')) ?? '0', 16);
    const oper = readText(join(path, 'operstate'));
    if ((flags & IFF_UP) !== 0 || oper === 'up') out.push(`network interface ${name} is up (flags ${readText(join(path, 'flags')) ?? '?'}, operstate ${oper ?? '?'})`);
  }
  return out;
}

/**
 * virtio-9p shares below the device that are mounted (matched by mount tag):
 * the virtual lab's L1 has its root file system on one, and no block device
 * shows for it.
 */
export function mounted9pShares(p: HostPaths, devicePath: string): string[] {
  const tags = listDir(devicePath)
    .filter((n) => /^virtio\d+$/.test(n))
    .map((n) => readText(join(devicePath, n, 'mount_tag'))?.replace(/\0+$/, ''))
    .filter((t): t is string => !!t);
  if (!tags.length) return [];
  const mounts = parseMountinfo(readText(join(p.proc, 'self', 'mountinfo')) ?? '').filter((m) => m.fsType === '9p');
  return tags.flatMap((tag) => {
    const points = mounts.filter((m) => m.source === tag).map((m) => m.mountPoint);
    return points.length ? [`9p share ${tag} is mounted on ${points.join(', ')}`] : [];
  });
}

/** Every reason the host is using the device; [] when it may be taken. */
export function deviceInUse(p: HostPaths, devicePath: string): string[] {
  return [...mountedBlockUses(p, devicePath), ...mounted9pShares(p, devicePath), ...upInterfaces(p, devicePath)];
}
