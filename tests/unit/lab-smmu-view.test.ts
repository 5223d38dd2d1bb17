import { expect } from 'chai';
import { hostSmmuFields, parseSmmuProbeLines, probeLineView, vsmmuView } from '../../harness/lab/smmu-view.js';
import { loadConfig } from '../../harness/viommu/configs.js';

/**
 * The arm64 lab's L1 hw info (facts §12: L0's emulated arm-smmuv3, stage=nested; idr1 0x02730010
 * as the lab test recorded it, SIDSIZE 16, SSIDSIZE 0); idr1 is varied per case.
 */
const L1 = { idr0: 0x0d44101b, idr1: 0x02730010, idr3: 0x1414, idr5: 0x74 };
const idr = (idr1: number, over: Partial<typeof L1> = {}): number[] => {
  const r = { ...L1, ...over };
  return [r.idr0, idr1, 0, r.idr3, 0, r.idr5];
};
/** IDR1 with SIDSIZE 16 and SSIDSIZE n. */
const idr1 = (ssid: number): number => 16 | (ssid << 6);

describe('vSMMU view: arm-smmuv3 accel=on IDRs from the config and the host SMMU (QEMU 11.1.3 rules)', () => {
  it('reads the L1 host fields: no ATS, RIL, no substreams, 44-bit OAS', () => {
    expect(hostSmmuFields(idr(L1.idr1))).to.deep.equal({ ats: 0, ril: 1, ssidSize: 0, oas: 4 });
  });

  it('auto row on the L1 host: ATS off (host IDR0.ATS 0), RIL on (host IDR3.RIL 1), OAS 44 (host IDR5.OAS 4), SSIDSIZE the host’s', () => {
    const auto = loadConfig('arm-smmuv3-accel');
    expect(vsmmuView(auto, idr(L1.idr1))).to.deep.equal({ ok: true, view: { ats: false, ril: true, ssidBits: 0, oasBits: 44 } });
    expect(vsmmuView(auto, idr(idr1(20)))).to.deep.equal({ ok: true, view: { ats: false, ril: true, ssidBits: 20, oasBits: 44 } });
  });

  it('auto follows the host: ATS and RIL where it has them, OAS capped at 48-bit', () => {
    const auto = loadConfig('arm-smmuv3-accel');
    const rich = idr(idr1(8), { idr0: L1.idr0 | (1 << 10), idr5: 0x76 });
    expect(vsmmuView(auto, rich)).to.deep.equal({ ok: true, view: { ats: true, ril: true, ssidBits: 8, oasBits: 48 } });
    expect(vsmmuView(auto, idr(0, { idr3: 0x1014, idr5: 0x75 }))).to.deep.equal({ ok: true, view: { ats: false, ril: false, ssidBits: 0, oasBits: 48 } });
  });

  it('explicit row: the config’s values whatever the host offers above them', () => {
    const explicit = loadConfig('arm-smmuv3-accel-explicit');
    const want = { ok: true, view: { ats: false, ril: false, ssidBits: 0, oasBits: 44 } };
    expect(vsmmuView(explicit, idr(L1.idr1))).to.deep.equal(want);
    expect(vsmmuView(explicit, idr(idr1(20), { idr0: L1.idr0 | (1 << 10), idr5: 0x75 }))).to.deep.equal(want);
  });

  it('a vSMMU field above the host’s is QEMU’s refusal (check_hw_compatible)', () => {
    const r = vsmmuView(loadConfig('arm-smmuv3-accel-ssid'), idr(L1.idr1));
    expect(r.ok).to.equal(false);
    expect(!r.ok && r.reason).to.include('SSIDSIZE host=0 vSMMU=20');
    expect(vsmmuView(loadConfig('arm-smmuv3-accel-explicit'), idr(0, { idr5: 0x73 })).ok).to.equal(false);
  });

  it('parses the guest driver’s probe line and its ATS and RANGE_INV bits', () => {
    // As L2's guest printed them in the arm64 lab: the auto row, then the explicit row (ril off).
    const dmesg =
      '[    0.842946] arm-smmu-v3 arm-smmu-v3.0.auto: option mask 0x0\n[    0.846972] arm-smmu-v3 arm-smmu-v3.0.auto: oas 44-bit (features 0x01008305)\n';
    const p = parseSmmuProbeLines(dmesg);
    expect(p.map((x) => x.device)).to.deep.equal(['arm-smmu-v3.0.auto']);
    expect(probeLineView(p[0]!)).to.deep.equal({ ats: false, ril: true, oasBits: 44 });
    expect(probeLineView({ oasBits: 44, features: 0x01000305 })).to.deep.equal({ ats: false, ril: false, oasBits: 44 });
    expect(probeLineView({ oasBits: 48, features: 0x0000afef })).to.deep.equal({ ats: true, ril: true, oasBits: 48 });
    expect(probeLineView({ oasBits: 48, features: 0x2e0f })).to.deep.equal({ ats: false, ril: false, oasBits: 48 });
  });
});
