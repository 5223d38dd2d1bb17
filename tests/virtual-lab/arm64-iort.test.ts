import { expect } from 'chai';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { bootGuest, type BootedGuest } from '../../harness/guest/boot.js';
import { requireGuestImage, type GuestImage } from '../../harness/guest/image.js';
import { parseIort, readL1Iort, rootComplexFlags, tableUpgradeLine, IORT_MAF_CANWBS } from '../../harness/lab/iort.js';
import { ARM64_LAB_PLATFORM, arm64LabImage, type Arm64LabImage } from '../../harness/lab/platforms/arm64.js';
import { skipBecause } from '../../harness/report/skip.js';
import { useSuiteMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { nativeToolPath } from '../../harness/util/native-tools.js';
import { shellQuote } from '../../harness/util/shell.js';

interface ViommuAnswer {
  parent: { ok: boolean; errno?: string; hwpt_id?: number };
  viommu?: { ok: boolean; type: number; errno?: string; viommu_id?: number };
}

/** Binds the lab's e1000e (rp0, L1 bus 1) to vfio-pci and asks L1's kernel for a NEST_PARENT HWPT and an SMMUv3 vIOMMU on it. */
async function viommuAlloc(g: BootedGuest, probe: string): Promise<ViommuAnswer> {
  const bdf = '0000:01:00.0';
  await g.agent.check(`echo vfio-pci > /sys/bus/pci/devices/${bdf}/driver_override && echo ${bdf} > /sys/bus/pci/drivers_probe`);
  const cdev = `/dev/vfio/devices/${(await g.agent.check(`ls /sys/bus/pci/devices/${bdf}/vfio-dev`)).trim()}`;
  return JSON.parse(await g.agent.check(`${shellQuote(probe)} viommu-alloc ${cdev} 1`)) as ViommuAnswer;
}

/**
 * Why the arm64 lab boots L1 with an IORT override, both outcomes pinned on
 * the kernel's direct answer: on QEMU's own IORT (no CANWBS, no S2FWB) the
 * SMMUv3 driver refuses IOMMU_VIOMMU_ALLOC, and with the override it allocates.
 */
describe('arm64 lab L1: IORT override (CANWBS) and IOMMU_VIOMMU_ALLOC', function () {
  this.timeout(300_000);
  const machines = useSuiteMachines();
  let image: GuestImage;
  let probe: string;
  let lab: Arm64LabImage;
  const resultsDir = () => join(machines.artifactsDir, 'results');

  before(async function () {
    await requireQemu(this, 'aarch64');
    image = requireGuestImage(this, 'aarch64');
    probe = nativeToolPath('iommufd-probe', 'aarch64');
    if (!existsSync(probe)) skipBecause(this, `the aarch64 iommufd-probe is not built (${probe}; run scripts/build-tools.sh)`);
    mkdirSync(resultsDir(), { recursive: true });
    lab = await arm64LabImage((d) => machines.launch(d, { name: 'l1-iort-dump' }), image, { platform: ARM64_LAB_PLATFORM, image, resultsDir: resultsDir() });
    console.log(`      IORT override ${lab.override.dir} (${lab.dumpMs ? `QEMU's table read from an L1 in ${lab.dumpMs} ms` : 'cached'})`);
  });

  it("on QEMU's own IORT: no CANWBS on the root complex, and the kernel refuses the vIOMMU (EOPNOTSUPP) while accepting its parent", async () => {
    expect(rootComplexFlags(lab.override.orig).map((r) => r.flags & IORT_MAF_CANWBS)).to.deep.equal([0]);
    const g = await bootGuest(
      (d) => machines.launch(d, { name: 'l1-plain' }),
      { image, ...ARM64_LAB_PLATFORM.describe({ image, resultsDir: resultsDir() }, []) },
      { readyTimeoutMs: 120_000 },
    );
    try {
      expect(await readL1Iort(g.agent), "L1's IORT is the one the override was made from").to.deep.equal(lab.override.orig);
      const a = await viommuAlloc(g, probe);
      console.log(`      without the override: ${JSON.stringify(a)}`);
      expect(a.parent.ok, 'NEST_PARENT HWPT').to.equal(true);
      expect(a.viommu).to.deep.include({ ok: false, errno: 'EOPNOTSUPP' });
    } finally {
      await g.machine.shutdown();
    }
  });

  it('with the override: the kernel takes the table (Table Upgrade), sees CANWBS, and allocates the SMMUv3 vIOMMU', async () => {
    const g = await bootGuest(
      (d) => machines.launch(d, { name: 'l1-override' }),
      { image: lab.image, ...ARM64_LAB_PLATFORM.describe({ image: lab.image, resultsDir: resultsDir() }, []) },
      { readyTimeoutMs: 120_000 },
    );
    try {
      const dmesg = await g.agent.check('dmesg');
      const line = tableUpgradeLine(parseIort(lab.override.orig));
      expect(dmesg).to.include(line);
      console.log(
        `      dmesg: ${dmesg
          .split('\n')
          .find((l) => l.includes('Table Upgrade'))
          ?.trim()}`,
      );
      const seen = await readL1Iort(g.agent);
      expect(seen, "L1's IORT is the patched one").to.deep.equal(lab.override.patched);
      expect(parseIort(seen).oemRevision).to.equal(parseIort(lab.override.orig).oemRevision + 1);
      const a = await viommuAlloc(g, probe);
      console.log(`      with the override: ${JSON.stringify(a)}`);
      expect(a.parent.ok, 'NEST_PARENT HWPT').to.equal(true);
      expect(a.viommu, JSON.stringify(a)).to.deep.include({ ok: true, type: 1 });
    } finally {
      await g.machine.shutdown();
    }
  });
});
