import { expect } from 'chai';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeAtsCap } from '../../harness/pci/caps.js';
import { parseDmarTranslationStruct } from '../../harness/guest/vtd-debugfs.js';
import { rootPorts } from '../../harness/qemu/topology.js';
import { boot, useGuest } from './helpers.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const MiB = 1024 * 1024;
/** virtio-blk on rp0 (00:02.0, secondary bus 1). */
const BDF = '0000:01:00.0';
/** Its requester id as the vIOMMU traces it: bus 1, devfn 0. */
const SID = '0x100';
/** VIRTIO_F_ACCESS_PLATFORM: the device's DMA goes through the platform IOMMU. */
const VIRTIO_F_ACCESS_PLATFORM = 33;

describe('DMA through the vIOMMU (virtio-blk, iommu_platform=on, TCG)', function () {
  this.timeout(180_000);
  const guest = useGuest();
  const machines = guest.machines;

  for (const ats of [false, true]) {
    it(`${ats ? 'with ATS (device TLB)' : 'without ATS'}: the guest reads what the host wrote, the host reads what the guest wrote, translated by intel-iommu`, async () => {
      const disk = join(machines.artifactsDir, 'disk.img');
      const content = randomBytes(8 * MiB);
      writeFileSync(disk, content);
      const g = await boot(machines, {
        image: guest.image,
        devices: [
          ...rootPorts(1),
          { driver: 'virtio-blk-pci', id: 'blk0', bus: 'rp0', drive: 'disk0', iommu_platform: true, 'disable-legacy': 'on', ...(ats ? { ats: true } : {}) },
        ],
        extraArgs: ['-blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'disk0', file: { driver: 'file', filename: disk } })],
        trace: ['vtd_iotlb_page_update', 'vtd_dmar_fault'],
      });
      const a = g.agent;

      // The disk is the virtio-blk on rp0, it negotiated ACCESS_PLATFORM, and
      // its IOMMU group translates (a DMA domain, not identity).
      expect((await a.check('readlink -f /sys/block/vda/device/..')).trim()).to.match(new RegExp(`/${BDF.replace(/\./g, '\\.')}$`));
      const features = (await a.check('cat /sys/block/vda/device/features')).trim();
      expect(features[VIRTIO_F_ACCESS_PLATFORM], `virtio features ${features}`).to.equal('1');
      expect((await a.check(`cat /sys/bus/pci/devices/${BDF}/iommu_group/type`)).trim()).to.match(/^DMA(-FQ)?$/);
      const entry = parseDmarTranslationStruct(await a.check('cat /sys/kernel/debug/iommu/intel/dmar_translation_struct')).entries.find(
        (e) => `0000:${e.bdf}` === BDF,
      );
      expect(entry, `${BDF} in dmar_translation_struct`).to.deep.include({ mode: 'second-stage', present: true });
      const atsCap = decodeAtsCap(await a.readFile(`/sys/bus/pci/devices/${BDF}/config`));
      if (ats) expect(atsCap?.enabled, 'ATS enabled by the guest').to.equal(true);
      else expect(atsCap).to.equal(undefined);

      // Device → memory: the guest reads the whole disk (O_DIRECT would bypass
      // nothing here: every block comes by DMA into the page cache).
      const guestSum = (await a.check('sha256sum /dev/vda', { timeoutMs: 60_000 })).split(' ')[0];
      expect(guestSum).to.equal(sha256(content));

      // Memory → device: the guest writes 2 MiB of its own at 3 MiB and flushes.
      const written = (await a.check('dd if=/dev/urandom of=/tmp/w bs=1M count=2 2>/dev/null && sha256sum /tmp/w', { timeoutMs: 60_000 })).split(' ')[0];
      await a.check('dd if=/tmp/w of=/dev/vda bs=1M seek=3 conv=fsync 2>&1', { timeoutMs: 60_000 });
      await g.machine.shutdown();
      const after = readFileSync(disk);
      expect(sha256(after.subarray(3 * MiB, 5 * MiB))).to.equal(written);
      expect(sha256(after.subarray(0, 3 * MiB))).to.equal(sha256(content.subarray(0, 3 * MiB)));

      // QEMU translated the device's addresses through the guest's tables
      // (IOTLB fills for its requester id) and saw no fault.
      const trace = readFileSync(g.machine.traceFile!, 'utf8');
      const fills = trace.split('\n').filter((l) => l.startsWith('vtd_iotlb_page_update') && l.includes(`sid ${SID} `));
      expect(fills.length, `IOTLB fills for sid ${SID}`).to.be.greaterThan(100);
      expect(trace).to.not.match(/^vtd_dmar_fault/m);
    });
  }
});
