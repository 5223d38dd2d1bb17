import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blockDevicesBelow, deviceInUse, parseMountinfo, parseSwaps } from '../../harness/host/in-use.js';
import { decodePriCap, extCapsUnreadableReason, summarizeExtCaps } from '../../harness/pci/config.js';
import { iommufdVfioState, listIommus, listPciDevices, readPciDevice, REAL_HOST } from '../../harness/host/sysfs.js';
import { skipBecause } from '../../harness/report/skip.js';
import { repoRoot } from '../../harness/util/paths.js';
import { ATS, FakeHost, L1_CAP, L1_ECAP, PASID_20, pcieConfig, PRI } from '../fixtures/host/fake-sysfs.js';

const fixtures = join(repoRoot, 'tests', 'fixtures', 'host');
describe('host sysfs', () => {
  let root: string;
  let fake: FakeHost;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'host-sysfs-'));
    fake = new FakeHost(root);
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('reads a device: ids, class, driver, IOMMU group and its members, upstream port', () => {
    fake.addDevice({ bdf: '0000:00:01.0', classCode: 0x060400, driver: 'pcieport', group: 1 });
    fake.addDevice({ bdf: '0000:01:00.0', vendor: 0x8086, device: 0x10d3, parent: '0000:00:01.0', driver: 'e1000e', group: 1, iommu: 'dmar0' });
    const d = readPciDevice(fake.paths, '0000:01:00.0')!;
    expect(d).to.include({ bdf: '0000:01:00.0', vendor: 0x8086, device: 0x10d3, classCode: 0x020000, driver: 'e1000e', iommuGroup: 1, iommu: 'dmar0', parent: '0000:00:01.0', isBridge: false });
    expect(d.path).to.equal(join(root, 'sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0'));
    expect(d.groupMembers).to.deep.equal(['0000:00:01.0', '0000:01:00.0']);
    expect(d).to.not.have.any.keys('driverOverride', 'vfioDev', 'cdev');
    expect(readPciDevice(fake.paths, '0000:00:01.0')!.isBridge).to.equal(true);
    expect(readPciDevice(fake.paths, '0000:09:00.0')).to.equal(undefined);
    expect(listPciDevices(fake.paths)).to.deep.equal(['0000:00:01.0', '0000:01:00.0']);
  });

  it('lists IOMMU instances and reads VT-d cap/ecap', () => {
    expect(listIommus(fake.paths)).to.deep.equal([]);
    fake.addVtd('dmar0', L1_CAP, L1_ECAP);
    fake.addDevice({ bdf: '0000:01:00.0', group: 3, iommu: 'dmar0' });
    const [i] = listIommus(fake.paths);
    expect(i).to.deep.include({ name: 'dmar0', kind: 'vtd', devices: ['0000:01:00.0'], problems: [] });
    expect(i!.vtd).to.deep.equal({ cap: 0xd2008c40660462n, ecap: 0x499880f00f4en });
  });

  it('tells /dev/iommu and vfio cdev support apart', () => {
    expect(iommufdVfioState(fake.paths)).to.deep.equal({ devIommu: false, devVfioDevices: false, classVfioDev: false, vfioPciDriver: true, devVfioContainer: false });
    fake.enableIommufd();
    expect(iommufdVfioState(fake.paths)).to.include({ devIommu: true, devVfioDevices: true, classVfioDev: true });
  });

  it('decodes PASID (width, exec, priv), ATS and PRI from config space', () => {
    const cfg = pcieConfig([ATS, PRI, PASID_20]);
    const s = summarizeExtCaps(cfg);
    expect(s).to.deep.include({ pcie: true, pcieType: 'endpoint', extendedVisible: true, extended: ['ATS', 'PRI', 'PASID'], problems: [] });
    expect(s.pasid).to.deep.equal({ offset: s.pasid!.offset, maxPasidWidth: 20, execPermissionSupported: true, privilegedModeSupported: true, enabled: false });
    expect(s.ats).to.deep.include({ enabled: true, invalidateQueueDepth: 0 });
    expect(s.pri).to.deep.include({ enabled: true, outstandingCapacity: 512 });
    expect(decodePriCap(cfg)).to.include({ stopped: true, prgResponsePasidRequired: false });
    expect(extCapsUnreadableReason(s)).to.equal(undefined);
    const none = summarizeExtCaps(pcieConfig([{ id: 0x01, body: new Array(40).fill(0) }]));
    expect(none).to.not.have.any.keys('pasid', 'ats', 'pri');
  });

  it('says when only the header is readable, instead of "no PASID"', () => {
    const s = summarizeExtCaps(pcieConfig([PASID_20]).subarray(0, 64));
    expect(s.extendedVisible).to.equal(false);
    expect(extCapsUnreadableReason(s)).to.match(/^only 64 bytes of config space are readable/);
  });

  it('reads the config space captured from a virtio-net function (256 bytes, no extended space)', () => {
    const s = summarizeExtCaps(readFileSync(join(fixtures, 'config-virtio-net-0000-00-03.0.bin')));
    expect(s).to.deep.include({ configBytes: 256, extendedVisible: false, extended: [], problems: [] });
    expect(s.pasid).to.equal(undefined);
  });

  it('parses mountinfo captured on a Debian 12 VM, with escapes', () => {
    const m = parseMountinfo(readFileSync(join(fixtures, 'mountinfo-debian12-vm.txt'), 'utf8'));
    expect(m.find((e) => e.mountPoint === '/')).to.deep.equal({ majMin: '254:0', mountPoint: '/', fsType: 'ext4', source: '/dev/vda' });
    expect(m.length).to.be.greaterThan(10);
    const [e] = parseMountinfo('36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n');
    expect(e).to.deep.equal({ majMin: '98:0', mountPoint: '/mnt/my disk', fsType: 'ext3', source: '/dev/root' });
    expect(parseSwaps('Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p3                          partition\t8388604\t0\t-2\n')).to.deep.equal(['/dev/nvme0n1p3']);
  });

  it('finds disks, partitions and holders below a device, and which are mounted', () => {
    fake.addDevice({ bdf: '0000:02:00.0', classCode: 0x010802, driver: 'nvme', group: 4 });
    fake.addDisk('0000:02:00.0', 'nvme0n1', '259:0', [
      ['nvme0n1p1', '259:1'],
      ['nvme0n1p2', '259:2'],
    ]);
    fake.addDm('dm-0', 'vg-root', '253:0', 'nvme0n1p2');
    const dev = readPciDevice(fake.paths, '0000:02:00.0')!;
    expect(blockDevicesBelow(fake.paths, dev.path).map((b) => b.via)).to.have.members(['nvme0n1', 'nvme0n1 → nvme0n1p1', 'nvme0n1 → nvme0n1p2', 'nvme0n1 → nvme0n1p2 → dm-0']);
    expect(deviceInUse(fake.paths, dev.path)).to.deep.equal([]);
    fake.mount('253:0', '/dev/mapper/vg-root', '/');
    expect(deviceInUse(fake.paths, dev.path)).to.deep.equal(['block device nvme0n1 → nvme0n1p2 → dm-0 (253:0) is mounted on /']);
  });

  it('sees what the host uses on this machine, without writing (read-only, real /sys)', function () {
    // This machine's root disk and network are virtio functions; on another machine the checks
    // merely find nothing to assert about.
    const uses = listPciDevices(REAL_HOST).flatMap((b) => deviceInUse(REAL_HOST, readPciDevice(REAL_HOST, b)!.path));
    const rootMount = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8')).find((m) => m.mountPoint === '/');
    if (!rootMount?.source.startsWith('/dev/vd') && !rootMount?.source.startsWith('/dev/nvme') && !rootMount?.source.startsWith('/dev/sd'))
      skipBecause(this, `the root file system (${rootMount?.source ?? 'unknown'}) is not on a PCI block device (vd*, nvme*, sd*)`);
    expect(uses.join('\n')).to.match(/is mounted on .*\/(\n|$)/);
  });
});
