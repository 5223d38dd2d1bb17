import * as chai from 'chai';
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseHwInfoJson, parseHwptAllocJson, type HwInfo } from '../../harness/host/hwinfo.js';
import { hostPrerequisites, type HostReport } from '../../harness/host/report.js';
import { summarizeVtd } from '../../harness/guest/vtd-regs.js';
import { skipBecause } from '../../harness/report/skip.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { defaultTraceEventsPath, TraceFormats } from '../../harness/trace/formats.js';
import { parseKprobeTrace } from '../../harness/trace/kprobes.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { expectHwpt } from '../../harness/trace/oracle.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';

chai.use(iommufdAssertions);

/**
 * Captures from the virtual lab's L1 with the synthetic vfio-user endpoints
 * (tests/lab/pasid.test.ts; where each came from is in the fixture folders'
 * READMEs): the parsers and the oracle must read them as the live run did.
 */
const fixture = (...p: string[]) => readFileSync(join(repoRoot, 'tests', 'fixtures', ...p), 'utf8');
const lines = (...p: string[]) => fixture(...p).trim().split('\n');

describe('virtual lab PASID captures (synthetic vfio-user endpoints in L1)', () => {
  describe('iommufd-probe output', () => {
    const hw = lines('host', 'l1-iommufd-probe-hw-info.jsonl').map((l) => {
      const r = parseHwInfoJson(l);
      if (!r.ok) throw new Error(r.reason);
      return r.value;
    });
    const [pasid, noPrefix, plain] = hw as [HwInfo, HwInfo, HwInfo];

    it('hw info: the PASID endpoint has max_pasid_log2 20 and PASID exec|priv (0x6)', () => {
      expect(pasid).to.include({ outDataTypeName: 'INTEL_VTD', outCapabilities: 6, outMaxPasidLog2: 20 });
      expect(pasid.capabilityNames).to.deep.equal(['PCI_PASID_EXEC', 'PCI_PASID_PRIV']);
    });

    it('hw info: without the DevCap2 TLP prefix bits, capabilities 0 while max_pasid_log2 stays 20', () => {
      expect(noPrefix).to.include({ outCapabilities: 0, outMaxPasidLog2: 20 });
      expect(noPrefix.capabilityNames).to.deep.equal([]);
    });

    it('hw info: the plain endpoint has no PASID and reports ATS not supported (0x8)', () => {
      expect(plain).to.include({ outCapabilities: 8, outMaxPasidLog2: 0 });
      expect(plain.capabilityNames).to.deep.equal(['PCI_ATS_NOT_SUPPORTED']);
    });

    it('hw info: the emulated VT-d behind them has PASID (20 bits) but no nesting, first stage or dirty tracking', () => {
      const v = summarizeVtd(pasid.vtd!.capReg, pasid.vtd!.ecapReg);
      expect(pasid.vtd!.ecapReg).to.equal(0x499880f00f4en);
      expect(v).to.include({ scalableMode: true, nested: false, firstStage: false, secondStage: true, pasid: true, pasidBits: 20 });
    });

    it('HWPT_ALLOC: 0x0 and 0x8 granted; 0x1, 0x2, 0x9, 0xb EOPNOTSUPP; 0x4 ENOENT, for every device', () => {
      for (const l of lines('host', 'l1-iommufd-probe-hwpt-alloc.jsonl')) {
        const r = parseHwptAllocJson(l);
        if (!r.ok) throw new Error(r.reason);
        const answers = Object.fromEntries(r.value.results.map((x) => [`0x${x.flags.toString(16)}`, x.ok ? 'ok' : x.errno]));
        expect(answers, r.value.cdev).to.deep.equal({ '0x0': 'ok', '0x1': 'EOPNOTSUPP', '0x2': 'EOPNOTSUPP', '0x4': 'ENOENT', '0x8': 'ok', '0x9': 'EOPNOTSUPP', '0xb': 'EOPNOTSUPP' });
      }
    });
  });

  describe('harness doctor --json in L1', () => {
    const report = JSON.parse(fixture('host', 'l1-doctor-virtual-lab.json')) as HostReport & { prerequisites: unknown };
    const dev = (name: string) => report.devices.find((d) => d.name === name)!;

    it('lists every profile device at its L1 address, bound to vfio-pci', () => {
      expect(report.devices.map((d) => `${d.bdf} ${d.name}`)).to.deep.equal([
        '0000:01:00.0 e1000e',
        '0000:02:00.0 igb',
        '0000:03:00.0 edu',
        '0000:05:00.0 pasid-endpoint',
        '0000:06:00.0 plain-endpoint',
        '0000:07:00.0 pasid-no-tlp-prefix',
      ]);
      for (const d of report.devices) expect(d.driver, d.bdf).to.equal('vfio-pci');
    });

    it('the PASID endpoint: PASID capability enabled by L1, max_pasid_log2 20, capabilities 0x6', () => {
      const d = dev('pasid-endpoint');
      expect(d.vendor).to.equal('0x7e57');
      expect(d.extCaps!.pasid).to.include({ maxPasidWidth: 20, enabled: true });
      expect(d.hwInfo).to.include({ ok: true, outMaxPasidLog2: 20, outCapabilities: 6 });
    });

    it('the DevCap2-without-prefix variant: PASID capability present but not enabled, capabilities 0', () => {
      const d = dev('pasid-no-tlp-prefix');
      expect(d.extCaps!.pasid).to.include({ maxPasidWidth: 20, enabled: false });
      expect(d.hwInfo).to.include({ ok: true, outMaxPasidLog2: 20, outCapabilities: 0 });
    });

    it('recomputes the same prerequisites from the report (PASID device yes, nesting no)', () => {
      // The capture predates the kernel-answers prerequisite: a report without it says so.
      const { kernelAnswers, ...pre } = hostPrerequisites(report);
      expect(pre).to.deep.equal(report.prerequisites);
      expect(kernelAnswers).to.deep.equal({ ok: false, reason: 'kernel answers: not probed (a report from an older harness)' });
      expect(pre.pasidDevice).to.deep.equal({ ok: true, reason: 'device 0000:05:00.0 has a PASID capability (20 bits), out_max_pasid_log2=20' });
      expect(pre.nesting.ok).to.equal(false);
    });
  });

  describe('kernel answers (kprobes) to the six PASID scenarios', () => {
    const recs = parseKprobeTrace(fixture('kprobes', 'l1-pasid-scenarios.trace'));

    it('one request per scenario, each answered by the VT-d allocator: nesting refused with -95, the rest granted', () => {
      expect(recs.map((r) => [r.fields.flags, r.fields.ret, r.fields.vendor_ret])).to.deep.equal([
        [0x9, -95, -95], // fsts=on pasid-bits=20, PASID device
        [0x1, -95, -95], // the same, device without PASID
        [0x1, -95, -95], // fsts=on without pasid-bits, PASID device
        [0x0, 0, 0], // fsts=off pasid-bits=20, PASID device
        [0x0, 0, 0], // no vIOMMU, PASID device
        [0x9, -95, -95], // PASID capability without the TLP prefix bits
      ]);
      for (const r of recs) expect(r.fields.vendor_flags, r.raw).to.equal(r.fields.flags);
    });
  });

  describe('QEMU traces of L2 in L1', function () {
    let formats: TraceFormats;
    before(async function () {
      const path = defaultTraceEventsPath();
      if (!existsSync(path)) skipBecause(this, `no trace-events-all at ${path} (reference QEMU not installed)`);
      formats = await TraceFormats.load(path);
    });
    const model = (file: string, kernel = '') => {
      const m = IommufdModel.fromParse(parseTrace(fixture('trace', file), formats));
      for (const k of parseKprobeTrace(kernel)) m.addKernel(k);
      if (kernel) m.joinKernel();
      return m;
    };
    const hostCaps = { dirtyTracking: false, maxPasidLog2: 20 };
    const kprobeLines = fixture('kprobes', 'l1-pasid-scenarios.trace').split('\n');

    it('fsts=on, pasid-bits=20: QEMU asks for NEST_PARENT|PASID, the oracle agrees, the kernel refuses, the IOAS is freed', () => {
      const m = model('l1-pasid-fsts-pasid20-0x9-refused.log', kprobeLines.slice(0, 4).join('\n'));
      expect(m).to.have.requestedHwpt({ flags: ['NEST_PARENT', 'PASID'], ptKind: 'ioas', hwptType: 0, len: 0 });
      expect(m).to.have.requestedPerOracle(expectHwpt({ kind: 'intel-iommu', fsts: true, pasidBits: 20 }, hostCaps));
      // QEMU 11.1.3 traces the ioctl's -1, not the errno.
      expect(m.hwptAllocs[0]!.ret).to.equal(-1);
      expect(m.hwptAllocs[0]!.kernel?.fields).to.include({ ret: -95, vendor_ret: -95 });
      expect(m).to.have.freedEverything();
    });

    it('fsts=off, pasid-bits=20: flags 0 granted, attached at pasid 0, RAM mapped from the hugetlb memfd', () => {
      const m = model('l1-pasid-scalable-pasid20-0x0-accepted.log', kprobeLines.slice(12, 16).join('\n'));
      expect(m).to.have.allocatedHwpt({ flags: [], ptKind: 'ioas' });
      expect(m).to.have.requestedPerOracle(expectHwpt({ kind: 'intel-iommu', fsts: false, pasidBits: 20 }, hostCaps));
      expect(m).to.have.attached({ pasid: 0, name: '0000:05:00.0', targetKind: 'hwpt' });
      expect(m.hwptAllocs[0]!.kernel?.fields.ret).to.equal(0);
    });
  });
});
