import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeGsts, parseDmarTranslationStruct, parseIommuRegset } from '../../harness/guest/vtd-debugfs.js';
import {
  CAP_FIELDS,
  describeRegister,
  ECAP_FIELDS,
  expectedVtd,
  parseHexRegister,
  summarizeVtd,
  type IntelIommuProps,
} from '../../harness/guest/vtd-regs.js';
import { repoRoot } from '../../harness/util/paths.js';

const fixtures = join(repoRoot, 'tests', 'fixtures', 'guest');
interface Capture {
  name: string;
  props: IntelIommuProps;
  cap: string;
  ecap: string;
}
// Read from /sys/class/iommu/dmar0/intel-iommu/{cap,ecap} in guests booted
// with QEMU 11.1.3 under TCG, one per intel-iommu configuration.
const captures = (JSON.parse(readFileSync(join(fixtures, 'vtd-registers.json'), 'utf8')) as { captures: Capture[] }).captures;
const capture = (name: string): Capture => captures.find((c) => c.name === name)!;

describe('VT-d cap/ecap decoding (real registers)', () => {
  it('decodes scalable mode with 20 PASID bits and a device TLB', () => {
    const c = capture('sm-ss-pasid20-dt');
    const s = summarizeVtd(parseHexRegister(c.cap), parseHexRegister(c.ecap));
    expect(s).to.deep.include({
      cachingMode: true,
      maxGuestAddressWidth: 48,
      agaws: [39, 48],
      scalableMode: true,
      secondStage: true,
      firstStage: false,
      nested: false,
      secondStageAccessedDirty: false,
      pasid: true,
      pasidBits: 20,
      deviceTlb: true,
      interruptRemapping: true,
      extendedInterruptMode: false,
      passThrough: true,
    });
    expect(s.ecap.fields.PSS).to.equal(19);
    expect(s.ecap.flags).to.deep.equal(['QI', 'DT', 'IR', 'PT', 'SRS', 'PASID', 'SMTS', 'SLTS']);
    expect(s.ecap.unknownBits).to.deep.equal([]);
    expect(s.cap.unknownBits).to.deep.equal([]);
  });

  it('decodes first-stage translation: FLTS and FS1GP instead of SLTS', () => {
    const s = summarizeVtd(parseHexRegister(capture('sm-fs').cap), parseHexRegister(capture('sm-fs').ecap));
    expect(s).to.deep.include({ scalableMode: true, firstStage: true, secondStage: false, firstStage1G: true, pasid: false, pasidBits: 0 });
    const svm = summarizeVtd(parseHexRegister(capture('sm-fs-pasid20-svm').cap), parseHexRegister(capture('sm-fs-pasid20-svm').ecap));
    expect(svm).to.deep.include({ firstStage: true, pasidBits: 20, pageRequest: true });
    expect(svm.ecap.flags).to.include.members(['PRS', 'PDS', 'NWFS']);
  });

  it('decodes legacy mode and a 39-bit address width', () => {
    const legacy = summarizeVtd(parseHexRegister(capture('legacy').cap), parseHexRegister(capture('legacy').ecap));
    expect(legacy).to.deep.include({ scalableMode: false, firstStage: false, secondStage: false, pasid: false, cachingMode: true });
    const aw39 = summarizeVtd(parseHexRegister(capture('sm-ss-aw39').cap), parseHexRegister(capture('sm-ss-aw39').ecap));
    expect(aw39).to.deep.include({ maxGuestAddressWidth: 39, agaws: [39], cachingMode: false, deviceTlb: false });
  });

  it('matches expectedVtd() for every captured configuration', () => {
    for (const c of captures) {
      const s = summarizeVtd(parseHexRegister(c.cap), parseHexRegister(c.ecap));
      const want = expectedVtd(c.props);
      const got = Object.fromEntries(Object.keys(want).map((k) => [k, s[k as keyof typeof s]]));
      expect(got, `${c.name} (${JSON.stringify(c.props)}): cap ${c.cap} ecap ${c.ecap}`).to.deep.equal(want);
    }
  });

  it('describes a register by its set fields', () => {
    const s = summarizeVtd(parseHexRegister('80d2008c222f0686'), parseHexRegister('499880f00f4e'));
    expect(describeRegister(s.cap, CAP_FIELDS)).to.equal(
      '0x80d2008c222f0686: ND=0x6 CM SAGAW=0x6 MGAW=0x2f FRO=0x22 SLLPS=0x3 PSI MAMV=0x12 DWD DRD ESRTPS',
    );
    expect(describeRegister(s.ecap, ECAP_FIELDS)).to.match(/^0x499880f00f4e: QI DT IR PT IRO=0xf MHMV=0xf SRS PSS=0x13 PASID SMTS SLTS$/);
  });

  it('refuses a value that is not a 64-bit hex register', () => {
    expect(() => parseHexRegister('xyz', 'ecap')).to.throw(/ecap: "xyz" is not a 64-bit hex value/);
    expect(() => parseHexRegister('1'.repeat(17))).to.throw(/not a 64-bit/);
    expect(parseHexRegister('0x10\n')).to.equal(16n);
  });
});

describe('intel-iommu debugfs (real captures)', () => {
  const dts = (name: string) => parseDmarTranslationStruct(readFileSync(join(fixtures, `dmar_translation_struct.${name}.txt`), 'utf8'));

  it('reads legacy-mode context entries (no PASID table)', () => {
    const t = dts('legacy');
    expect(t.unparsed).to.deep.equal([]);
    expect(t.rootTables.get('dmar0')).to.be.a('bigint');
    expect(t.entries.length).to.be.greaterThan(0);
    for (const e of t.entries) expect(e).to.deep.include({ pasid: -1, mode: 'legacy', present: true });
    expect(t.entries[0]).to.deep.include({ bdf: '00:00.0', domainId: 2 });
  });

  it('reads the PASID-table entry type: second-stage vs first-stage', () => {
    expect(dts('sm-ss-pasid20-dt').entries.map((e) => e.mode)).to.satisfy((ms: string[]) => ms.every((m) => m === 'second-stage'));
    const fs = dts('sm-fs');
    expect(fs.unparsed).to.deep.equal([]);
    expect(fs.entries.map((e) => e.mode)).to.satisfy((ms: string[]) => ms.every((m) => m === 'first-stage'));
    expect(fs.entries[0]).to.deep.include({ pasid: 0, domainId: 2, present: true });
  });

  it('keeps unknown lines apart', () => {
    const t = parseDmarTranslationStruct('IOMMU dmar0: Root Table Address: 0x1000\nDMA Remapping is not enabled on dmar0\n');
    expect(t.entries).to.deep.equal([]);
    expect(t.unparsed).to.deep.equal(['DMA Remapping is not enabled on dmar0']);
  });

  it('reads the register set: translation and interrupt remapping enabled', () => {
    const regs = parseIommuRegset(readFileSync(join(fixtures, 'iommu_regset.sm-ss-pasid20-dt.txt'), 'utf8')).get('dmar0')!;
    expect(regs.get('CAP')).to.equal(0x80d2008c222f0686n);
    expect(regs.get('ECAP')).to.equal(0x499880f00f4en);
    expect(decodeGsts(regs.get('GSTS')!).flags).to.deep.equal(['IRTPS', 'IRES', 'QIES', 'RTPS', 'TES']);
  });
});
