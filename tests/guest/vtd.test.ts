import { expect } from 'chai';
import type { PropValue } from '../../harness/qemu/argv.js';
import { decodeGsts, parseDmarTranslationStruct, parseIommuRegset, type TranslationMode } from '../../harness/guest/vtd-debugfs.js';
import { CAP_FIELDS, describeRegister, ECAP_FIELDS, expectedVtd, parseHexRegister, summarizeVtd, type IntelIommuProps } from '../../harness/guest/vtd-regs.js';
import { boot, useGuest } from './helpers.js';

interface Variant {
  name: string;
  props: IntelIommuProps & Record<string, PropValue>;
  /** How the guest's driver programs its devices' translation. */
  mode: TranslationMode;
}

// A table of vIOMMU configurations; each becomes one boot and one test.
const variants: Variant[] = [
  {
    name: 'scalable mode, 20-bit PASID, device TLB: the guest uses second-stage tables',
    props: { intremap: 'on', 'scalable-mode': true, 'pasid-bits': 20, 'device-iotlb': true, 'caching-mode': true },
    mode: 'second-stage',
  },
  {
    name: 'scalable mode with fsts: the guest uses first-stage tables',
    props: { intremap: 'on', 'scalable-mode': true, fsts: true, 'caching-mode': true },
    mode: 'first-stage',
  },
  {
    name: 'legacy mode: context entries without PASID tables',
    props: { intremap: 'on', 'caching-mode': true },
    mode: 'legacy',
  },
  {
    name: 'scalable mode, 39-bit address width, no caching mode',
    props: { 'scalable-mode': true, 'aw-bits': 39 },
    mode: 'second-stage',
  },
];

describe('intel-iommu as the guest sees it (TCG)', function () {
  this.timeout(120_000);
  const guest = useGuest();
  const machines = guest.machines;

  for (const v of variants) {
    it(v.name, async () => {
      const g = await boot(machines, { image: guest.image, intelIommu: v.props });
      const a = g.agent;

      // cap/ecap decoded into named bits, against what the configuration implies.
      const cap = parseHexRegister(await a.check('cat /sys/class/iommu/dmar0/intel-iommu/cap'), 'cap');
      const ecap = parseHexRegister(await a.check('cat /sys/class/iommu/dmar0/intel-iommu/ecap'), 'ecap');
      const s = summarizeVtd(cap, ecap);
      const want = expectedVtd(v.props);
      const got = Object.fromEntries(Object.keys(want).map((k) => [k, s[k as keyof typeof s]]));
      expect(got, `cap ${describeRegister(s.cap, CAP_FIELDS)}\necap ${describeRegister(s.ecap, ECAP_FIELDS)}`).to.deep.equal(want);

      // The driver turned translation (and interrupt remapping) on.
      const regs = parseIommuRegset(await a.check('cat /sys/kernel/debug/iommu/intel/iommu_regset')).get('dmar0');
      expect(regs, 'dmar0 in iommu_regset').to.not.equal(undefined);
      expect(regs!.get('CAP')).to.equal(cap);
      const gsts = decodeGsts(regs!.get('GSTS')!);
      expect(gsts.flags).to.include.members(['TES', 'RTPS', 'QIES', 'IRES']);
      await g.console.waitFor('DMAR: Intel(R) Virtualization Technology for Directed I/O', 1000, { from: 'start' });

      // Every device's translation entry is of the configured kind.
      const ts = parseDmarTranslationStruct(await a.check('cat /sys/kernel/debug/iommu/intel/dmar_translation_struct'));
      expect(ts.unparsed).to.deep.equal([]);
      expect(ts.entries.length).to.be.greaterThan(0);
      expect([...new Set(ts.entries.map((e) => e.mode))]).to.deep.equal([v.mode]);
      expect(ts.entries.every((e) => e.present)).to.equal(true);

      // IOMMU groups exist and every PCI function is in one, translated (DMA domain).
      const devs = (await a.check('ls /sys/bus/pci/devices')).trim().split('\n');
      const groups = (await a.check('for d in /sys/bus/pci/devices/*; do g=$(readlink $d/iommu_group); echo "${d##*/} ${g##*/} $(cat $d/iommu_group/type)"; done'))
        .trim()
        .split('\n')
        .map((l) => l.split(' '));
      expect(groups.map((x) => x[0])).to.deep.equal(devs);
      for (const [bdf, group, type] of groups) {
        expect(group, `${bdf} iommu_group`).to.match(/^\d+$/);
        expect(type, `${bdf} iommu_group/type`).to.match(/^DMA(-FQ)?$/);
      }
    });
  }
});
