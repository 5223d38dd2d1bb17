import { expect } from 'chai';
import { describeCaps } from '../../harness/pci/caps.js';
import { guestPasidCap, listPciFunctions, walkGuestPciCaps } from '../../harness/guest/pci-sysfs.js';
import { rootPorts } from '../../harness/qemu/topology.js';
import { boot, useGuest } from './helpers.js';

describe('PCI capability walker over a live guest sysfs (TCG)', function () {
  this.timeout(120_000);
  const guest = useGuest();
  const machines = guest.machines;

  it('walks every function without a problem and finds ATS, ARI, SR-IOV where the devices have them', async () => {
    const g = await boot(machines, {
      image: guest.image,
      devices: [
        ...rootPorts(3),
        { driver: 'e1000e', id: 'nic0', bus: 'rp0', romfile: '' },
        { driver: 'igb', id: 'nic1', bus: 'rp1', romfile: '' },
        { driver: 'virtio-net-pci', id: 'net0', bus: 'rp2', iommu_platform: true, ats: true, 'disable-legacy': 'on', romfile: '' },
      ],
    });
    const fns = await listPciFunctions(g.agent);
    const byBdf = new Map(fns.map((f) => [f.bdf, f]));
    expect(byBdf.get('0000:01:00.0')).to.deep.include({ vendor: 0x8086, device: 0x10d3, class: 0x020000 });
    expect(byBdf.get('0000:02:00.0')).to.deep.include({ vendor: 0x8086, device: 0x10c9 });
    expect(byBdf.get('0000:03:00.0')).to.deep.include({ vendor: 0x1af4, device: 0x1041, driver: 'virtio-pci' });
    expect(byBdf.get('0000:00:02.0')).to.deep.include({ driver: 'pcieport' });
    for (const f of fns) expect(f.iommuGroup, `${f.bdf} iommu group`).to.be.a('number');

    const walks = new Map<string, string>();
    for (const f of fns) {
      const w = await walkGuestPciCaps(g.agent, f.bdf);
      expect(w.problems, `${f.bdf}: ${describeCaps(w)}`).to.deep.equal([]);
      walks.set(f.bdf, describeCaps(w));
    }
    expect(walks.get('0000:00:02.0')).to.equal('EXP@0x54 MSIX@0x48 SSVID@0x40 | ERR@0x100 ACS@0x148');
    expect(walks.get('0000:02:00.0')).to.equal('PM@0x40 MSI@0x50 MSIX@0x70 EXP@0xa0 | ERR@0x100 ARI@0x150 SRIOV@0x160');
    expect(walks.get('0000:03:00.0')).to.match(/\| ATS@0x100$/);
    // No emulated device offers PASID (facts sheet §8): the walker says so.
    for (const f of fns) expect(await guestPasidCap(g.agent, f.bdf), f.bdf).to.equal(undefined);
  });
});
