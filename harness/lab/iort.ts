import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Agent } from '../guest/agent.js';
import type { GuestImage } from '../guest/image.js';
import { cacheDir, repoRoot } from '../util/paths.js';

/**
 * The arm64 lab's IORT override. Linux's SMMUv3 driver allocates an iommufd
 * vIOMMU only when the SMMU is coherent with the CPU's cache writes: S2FWB
 * (IDR3), or CANWBS on the root complex in IORT. QEMU's SMMUv3 has neither,
 * so IOMMU_VIOMMU_ALLOC answers EOPNOTSUPP in L1 and an L2 with accel=on
 * exits. Linux replaces an ACPI table from an uncompressed cpio before the
 * initrd (CONFIG_ACPI_TABLE_UPGRADE: kernel/firmware/acpi/IORT.aml, same OEM
 * ids, a higher oem_revision, a valid checksum). The table is QEMU's own,
 * read from an L1 booted once with the same machine layout, and patched here
 * by parsing it (ACPI 6.x IORT, DEN0049).
 */

/** Root complex memory access flags (IORT "Memory access properties"): CPM (bit 0), DACS (bit 1), CANWBS (bit 2). */
export const IORT_MAF_CANWBS = 0x4;
export const IORT_NODE_ROOT_COMPLEX = 2;
const ACPI_HEADER_LEN = 36;
const IORT_NODE_HEADER_LEN = 16;
/** In a root complex node: node header, then CCA (4 bytes), allocation hints (1), reserved (2), memory access flags (1). */
const RC_MAF_OFFSET = IORT_NODE_HEADER_LEN + 7;

export interface IortNode {
  type: number;
  /** Byte offset of the node in the table. */
  offset: number;
  length: number;
  revision: number;
}

export interface Iort {
  length: number;
  revision: number;
  oemId: string;
  oemTableId: string;
  oemRevision: number;
  checksumOk: boolean;
  nodes: IortNode[];
}

function checksum(b: Buffer): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return s;
}

/** Parses an IORT's header and node list; throws naming the field that is wrong. */
export function parseIort(b: Buffer): Iort {
  if (b.length < ACPI_HEADER_LEN + 12) throw new Error(`IORT: ${b.length} bytes, shorter than its header (48)`);
  const signature = b.toString('latin1', 0, 4);
  if (signature !== 'IORT') throw new Error(`IORT: signature is '${signature}', not 'IORT'`);
  const length = b.readUInt32LE(4);
  if (length !== b.length) throw new Error(`IORT: header length ${length} but the table has ${b.length} bytes`);
  const count = b.readUInt32LE(36);
  let offset = b.readUInt32LE(40);
  const nodes: IortNode[] = [];
  for (let i = 0; i < count; i++) {
    if (offset + IORT_NODE_HEADER_LEN > length) throw new Error(`IORT: node ${i} at offset ${offset} runs past the table (${length} bytes)`);
    const n: IortNode = { type: b.readUInt8(offset), length: b.readUInt16LE(offset + 1), revision: b.readUInt8(offset + 3), offset };
    if (n.length < IORT_NODE_HEADER_LEN || offset + n.length > length) throw new Error(`IORT: node ${i} at offset ${offset} has length ${n.length}`);
    nodes.push(n);
    offset += n.length;
  }
  return {
    length,
    revision: b.readUInt8(8),
    oemId: b.toString('latin1', 10, 16),
    oemTableId: b.toString('latin1', 16, 24),
    oemRevision: b.readUInt32LE(24),
    checksumOk: checksum(b) === 0,
    nodes,
  };
}

/** The memory access flags byte of each root complex node (its offset in the table and its value). */
export function rootComplexFlags(b: Buffer): Array<{ offset: number; flags: number }> {
  return parseIort(b)
    .nodes.filter((n) => n.type === IORT_NODE_ROOT_COMPLEX)
    .map((n) => {
      if (n.length < RC_MAF_OFFSET + 1)
        throw new Error(`IORT: root complex node at offset ${n.offset} has length ${n.length}, too short for its memory access flags`);
      return { offset: n.offset + RC_MAF_OFFSET, flags: b.readUInt8(n.offset + RC_MAF_OFFSET) };
    });
}

/**
 * The table with CANWBS set on every root complex, oem_revision one higher
 * (the kernel upgrades a table only to a higher revision) and the checksum
 * fixed. Refuses a table without a root complex or with a bad checksum.
 */
export function patchIortCanwbs(orig: Buffer): Buffer {
  const t = parseIort(orig);
  if (!t.checksumOk) throw new Error('IORT: the checksum of the table given is wrong');
  const rcs = rootComplexFlags(orig);
  if (rcs.length === 0) throw new Error(`IORT: no root complex node (node types ${t.nodes.map((n) => n.type).join(', ')})`);
  const b = Buffer.from(orig);
  for (const rc of rcs) b.writeUInt8(rc.flags | IORT_MAF_CANWBS, rc.offset);
  b.writeUInt32LE((t.oemRevision + 1) >>> 0, 24);
  b.writeUInt8(0, 9);
  b.writeUInt8((0x100 - checksum(b)) & 0xff, 9);
  return b;
}

/** The kernel's line when it takes the override (drivers/acpi/tables.c): `ACPI: Table Upgrade: override [IORT-BOCHS -BXPC    ]`. */
export function tableUpgradeLine(t: Pick<Iort, 'oemId' | 'oemTableId'>): string {
  return `ACPI: Table Upgrade: override [IORT-${t.oemId.padEnd(6)}-${t.oemTableId.padEnd(8)}]`;
}

/** Reads the IORT an L1 booted with (sysfs gives the table as firmware built it). */
export async function readL1Iort(agent: Agent): Promise<Buffer> {
  const b = Buffer.from((await agent.check('base64 -w0 /sys/firmware/acpi/tables/IORT')).trim(), 'base64');
  parseIort(b);
  return b;
}

export interface IortOverride {
  /** The cache folder: IORT.orig.aml (QEMU's), early/kernel/firmware/acpi/IORT.aml (patched). */
  dir: string;
  patched: Buffer;
  orig: Buffer;
}

/**
 * The override for one layout key (QEMU and L1's machine layout: the caller
 * hashes them, see iortLayoutKey), from the cache or from `dump` (boot L1 once,
 * readL1Iort), patched and cached with its checksum fixed.
 */
export async function iortOverride(layoutKey: string, dump: () => Promise<Buffer>, cache = cacheDir()): Promise<IortOverride> {
  const dir = join(cache, 'iort', layoutKey);
  const origPath = join(dir, 'IORT.orig.aml');
  const early = join(dir, 'early', 'kernel', 'firmware', 'acpi');
  if (!existsSync(origPath)) {
    const orig = await dump();
    mkdirSync(early, { recursive: true });
    writeFileSync(join(early, 'IORT.aml.tmp'), patchIortCanwbs(orig));
    renameSync(join(early, 'IORT.aml.tmp'), join(early, 'IORT.aml'));
    writeFileSync(`${origPath}.tmp`, orig);
    renameSync(`${origPath}.tmp`, origPath);
  }
  const orig = readFileSync(origPath);
  return { dir, orig, patched: patchIortCanwbs(orig) };
}

/** A layout key: the QEMU (its version line) and L1's machine as data, hashed. */
export function iortLayoutKey(qemuVersion: string, machine: unknown): string {
  return createHash('sha256').update(qemuVersion).update('\0').update(JSON.stringify(machine)).digest('hex').slice(0, 16);
}

/**
 * The image with an initramfs that carries the override in front
 * (scripts/build-initramfs.sh --early: its own key, cached, the plain one
 * stays the default).
 */
export function withIortOverride(image: GuestImage, o: IortOverride, env: NodeJS.ProcessEnv = process.env): GuestImage {
  const out = execFileSync('sh', [join(repoRoot, 'scripts', 'build-initramfs.sh'), '--arch', image.arch, '--early', join(o.dir, 'early'), '--print'], {
    env: { ...env, HARNESS_CACHE_DIR: cacheDir() },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 120_000,
  });
  const initrd = out.trim().split('\n').at(-1)!;
  if (!existsSync(initrd)) throw new Error(`build-initramfs.sh --early printed '${initrd}', which does not exist`);
  return { ...image, initrd };
}
