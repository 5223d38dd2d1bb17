import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeAtsCap, decodePasidCap, describeCaps, findExtCap, walkPciCaps } from '../../harness/pci/caps.js';
import { parsePciList } from '../../harness/guest/pci-sysfs.js';
import { repoRoot } from '../../harness/util/paths.js';

// Config space read from /sys/bus/pci/devices/*/config in a guest (Linux
// 7.2.13, QEMU 11.1.3 q35 + intel-iommu, TCG); see pci-config.manifest.json.
const fixtures = join(repoRoot, 'tests', 'fixtures', 'guest');
const config = (bdf: string): Buffer => readFileSync(join(fixtures, `pci-config.${bdf.replace(/:/g, '-')}.bin`));

describe('PCI capability walker (real config space)', () => {
  it('walks a pcie-root-port: standard and extended lists', () => {
    const w = walkPciCaps(config('0000:00:10.0'));
    expect(w).to.deep.include({ vendorId: 0x1b36, deviceId: 0x000c, headerType: 1, extendedVisible: true, problems: [] });
    expect(w.standard.map((c) => c.name)).to.deep.equal(['EXP', 'MSIX', 'SSVID']);
    expect(w.extended.map((c) => [c.name, c.offset])).to.deep.equal([
      ['ERR', 0x100],
      ['ACS', 0x148],
    ]);
  });

  it('finds ATS on virtio-blk with ats=on, enabled by the guest under device-iotlb', () => {
    const b = config('0000:02:00.0');
    const w = walkPciCaps(b);
    expect(findExtCap(w, 'ATS')?.offset).to.equal(0x100);
    expect(decodeAtsCap(b, w)).to.deep.equal({ offset: 0x100, invalidateQueueDepth: 0, pageAlignedRequest: true, globalInvalidate: false, enabled: true, stu: 0 });
    expect(decodePasidCap(b, w)).to.equal(undefined);
  });

  it('walks igb: ARI and SR-IOV; e1000e: DSN', () => {
    expect(describeCaps(walkPciCaps(config('0000:03:00.0')))).to.equal('PM@0x40 MSI@0x50 MSIX@0x70 EXP@0xa0 | ERR@0x100 ARI@0x150 SRIOV@0x160');
    expect(describeCaps(walkPciCaps(config('0000:01:00.0')))).to.equal('PM@0xc8 MSI@0xd0 EXP@0xe0 MSIX@0xa0 | ERR@0x100 DSN@0x140');
  });

  it('says when the extended space is not visible (a 256-byte conventional function)', () => {
    const w = walkPciCaps(config('0000:00:01.0'));
    expect(w.extendedVisible).to.equal(false);
    expect(w.extended).to.deep.equal([]);
    expect(w.standard.map((c) => c.name)).to.deep.equal(['MSIX', 'VNDR', 'VNDR', 'VNDR', 'VNDR', 'VNDR']);
  });

  // A PASID capability as vfio-pci synthesizes it (facts sheet §3: offset
  // 0xff8 by default), chained after virtio-blk's real ATS capability. No
  // emulated device has one, so this one is built here from the PCIe layout.
  it('decodes a PASID capability chained at 0xff8', () => {
    const b = Buffer.from(config('0000:02:00.0'));
    b.writeUInt32LE(((b.readUInt32LE(0x100) & 0x000fffff) | (0xff8 << 20)) >>> 0, 0x100);
    b.writeUInt32LE(0x1b | (1 << 16), 0xff8);
    b.writeUInt16LE((20 << 8) | 0x2, 0xffc);
    b.writeUInt16LE(0x1, 0xffe);
    const w = walkPciCaps(b);
    expect(w.extended.map((c) => c.name)).to.deep.equal(['ATS', 'PASID']);
    expect(decodePasidCap(b, w)).to.deep.equal({
      offset: 0xff8,
      execPermissionSupported: true,
      privilegedModeSupported: false,
      maxPasidWidth: 20,
      enabled: true,
      execPermissionEnabled: false,
      privilegedModeEnabled: false,
    });
  });

  it('stops at a loop or a bad pointer and says where', () => {
    const loop = Buffer.from(config('0000:00:10.0'));
    loop.writeUInt32LE(((loop.readUInt32LE(0x148) & 0x000fffff) | (0x100 << 20)) >>> 0, 0x148);
    const w = walkPciCaps(loop);
    expect(w.extended.map((c) => c.name)).to.deep.equal(['ERR', 'ACS']);
    expect(w.problems).to.deep.equal(['extended capability list loops back to 0x100']);

    const bad = Buffer.from(config('0000:00:10.0'));
    bad.writeUInt8(0x20, 0x34);
    expect(walkPciCaps(bad).problems).to.deep.equal(['capability pointer 0x20 points into the header']);

    const odd = Buffer.from(config('0000:00:10.0'));
    odd.writeUInt32LE(((odd.readUInt32LE(0x100) & 0x000fffff) | (0x0c0 << 20)) >>> 0, 0x100);
    expect(walkPciCaps(odd).problems[0]).to.equal('extended capability at 0x100 has a bad next pointer 0x0c0');
  });

  it('needs at least the header', () => {
    expect(() => walkPciCaps(Buffer.alloc(16))).to.throw(/need at least the 64-byte header, got 16 bytes/);
  });
});

describe('guest PCI function list', () => {
  // Output of pci-sysfs.ts's listing script in a guest with three root ports,
  // e1000e, igb and virtio-net (Linux 7.2.13, QEMU 11.1.3).
  it('parses bdf, ids, class, driver and IOMMU group', () => {
    const fns = parsePciList(readFileSync(join(fixtures, 'pci-list.txt'), 'utf8'));
    expect(fns).to.have.length(11);
    expect(fns[0]).to.deep.equal({ bdf: '0000:00:00.0', vendor: 0x8086, device: 0x29c0, class: 0x060000, driver: undefined, iommuGroup: 0 });
    expect(fns.find((f) => f.bdf === '0000:00:02.0')).to.deep.include({ driver: 'pcieport', iommuGroup: 2 });
    expect(fns.filter((f) => f.iommuGroup === 5).map((f) => f.bdf)).to.deep.equal(['0000:00:1f.0', '0000:00:1f.2', '0000:00:1f.3']);
  });

  it('refuses a line of another shape', () => {
    expect(() => parsePciList('0000:00:00.0 0x8086 0x29c0')).to.throw(/expected 6 fields, got "0000:00:00.0 0x8086 0x29c0"/);
  });
});
