import { expect } from 'chai';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireGuestImage } from '../../harness/guest/image.js';
import { VTD_LAB_PLATFORM } from '../../harness/lab/virtual-lab.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { describeL1Lab } from './l1-lab.js';

/** The VT-d virtual lab: L1 boots under TCG with an emulated VT-d and synthetic vfio-user endpoints. */
describeL1Lab({
  title: 'virtual lab (L1 under TCG, emulated VT-d)',
  platform: VTD_LAB_PLATFORM,
  async image(ctx) {
    await requireQemu(ctx, 'x86_64');
    return requireGuestImage(ctx);
  },
  options: (machines) => {
    const vfioUserLog = join(machines.artifactsDir, 'vfio-user.log');
    return { log: (l) => appendFileSync(vfioUserLog, `${l}\n`) };
  },
  tests(lab) {
    it('serves L1 its synthetic vfio-user endpoints: each handshook with L0 QEMU', function () {
      for (const d of lab().vfioUser.devices) {
        const s = d.server.stats;
        expect(s.versionHandshakes, `${d.id}: VERSION handshakes`).to.be.greaterThan(0);
        console.log(`      ${d.id}: ${s.requests} requests, ${s.dmaMaps} DMA maps, ${s.errorReplies} error replies`);
      }
      expect(lab().vfioUser.devices.map((d) => d.id)).to.include('lab-pasid-endpoint');
    });
  },
});
