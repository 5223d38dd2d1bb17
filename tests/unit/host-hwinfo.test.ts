import { expect } from 'chai';
import { execa } from 'execa';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  capabilityNames,
  decodeSmmuIdr,
  parseHwInfoJson,
  parseHwptAllocJson,
  probeHwptAlloc,
  probeToolBuilt,
  probeToolPath,
  probeUnavailableReason,
  readHwInfo,
} from '../../harness/host/hwinfo.js';
import { skipBecause } from '../../harness/report/skip.js';
import { repoRoot } from '../../harness/util/paths.js';

// The shapes iommufd-probe prints (images/tools/iommufd-probe.c); the VT-d values are the
// virtual lab's L1 (facts sheet §9: max_pasid_log2 0 for emulated devices).
const VTD_OUT =
  '{"cdev":"/dev/vfio/devices/vfio0","dev_id":1,"out_data_type":1,"out_data_type_name":"INTEL_VTD","data_len":24,"out_capabilities":0,"out_max_pasid_log2":0,"vtd":{"flags":0,"cap_reg":"0xd2008c40660462","ecap_reg":"0x499880f00f4e"}}';
const SMMU_OUT =
  '{"cdev":"/dev/vfio/devices/vfio3","dev_id":2,"out_data_type":2,"out_data_type_name":"ARM_SMMUV3","data_len":40,"out_capabilities":7,"out_max_pasid_log2":20,"smmuv3":{"flags":0,"idr":["0x0f0d1e2b","0x00e70510","0x00000000","0x00000014","0x00000000","0x00000075"],"iidr":"0x0000043b","aidr":"0x00000002"}}';
const HWPT_OUT =
  '{"cdev":"/dev/vfio/devices/vfio0","dev_id":1,"ioas_id":2,"results":[{"flags":"0x0","ok":true,"hwpt_id":3,"destroyed":true},{"flags":"0x1","ok":false,"errno":"EOPNOTSUPP","errno_num":95},{"flags":"0x4","ok":false,"errno":"ENOENT","errno_num":2},{"flags":"0x8","ok":true,"hwpt_id":4,"destroyed":true}]}';

describe('host iommufd hw info', () => {
  it('parses IOMMU_GET_HW_INFO output for VT-d and SMMUv3', () => {
    const v = parseHwInfoJson(VTD_OUT);
    expect(v.ok).to.equal(true);
    if (!v.ok) return;
    expect(v.value).to.deep.equal({
      cdev: '/dev/vfio/devices/vfio0',
      devId: 1,
      outDataType: 1,
      outDataTypeName: 'INTEL_VTD',
      outCapabilities: 0,
      capabilityNames: [],
      outMaxPasidLog2: 0,
      vtd: { flags: 0, capReg: 0xd2008c40660462n, ecapReg: 0x499880f00f4en },
    });
    const s = parseHwInfoJson(SMMU_OUT);
    if (!s.ok) throw new Error(s.reason);
    expect(s.value.capabilityNames).to.deep.equal(['DIRTY_TRACKING', 'PCI_PASID_EXEC', 'PCI_PASID_PRIV']);
    expect(decodeSmmuIdr(s.value.smmuv3!.idr)).to.deep.include({ s1p: true, s2p: true, ssidSize: 20, sidSize: 16 });
    expect(capabilityNames(0x9 | 0x100)).to.deep.equal(['DIRTY_TRACKING', 'PCI_ATS_NOT_SUPPORTED', '0x100']);
  });

  it('parses the per-flags answers of HWPT_ALLOC', () => {
    const r = parseHwptAllocJson(HWPT_OUT);
    if (!r.ok) throw new Error(r.reason);
    expect(r.value.results).to.deep.equal([
      { flags: 0, ok: true, hwptId: 3 },
      { flags: 1, ok: false, errno: 'EOPNOTSUPP' },
      { flags: 4, ok: false, errno: 'ENOENT' },
      { flags: 8, ok: true, hwptId: 4 },
    ]);
  });

  it('turns the failure object, garbage and wrong fields into reasons', () => {
    expect(parseHwInfoJson('{"step":"open-iommu","error":"open /dev/iommu: No such file or directory","errno":"ENOENT","errno_num":2}')).to.deep.equal({
      ok: false,
      reason: 'iommufd-probe open-iommu failed: open /dev/iommu: No such file or directory (ENOENT)',
    });
    expect(parseHwInfoJson('Segmentation fault')).to.deep.equal({ ok: false, reason: 'iommufd-probe printed no JSON: "Segmentation fault"' });
    expect(parseHwInfoJson(VTD_OUT.replace('"dev_id":1', '"dev_id":"1"'))).to.deep.equal({ ok: false, reason: 'iommufd-probe output: dev_id is "1", not a number' });
    expect(parseHwInfoJson(VTD_OUT.replace('"0x499880f00f4e"', '"499880f00f4e"'))).to.deep.equal({
      ok: false,
      reason: 'iommufd-probe output: vtd.ecap_reg "499880f00f4e" is not hex',
    });
    expect(parseHwptAllocJson('{"dev_id":1,"ioas_id":2,"cdev":"x","results":[{"flags":"0x1","ok":false}]}')).to.deep.equal({
      ok: false,
      reason: 'iommufd-probe output: results[0].errno is undefined, not a string',
    });
  });

  it('says what is missing before running anything', () => {
    expect(probeUnavailableReason('/dev/null', { tool: '/nonexistent/iommufd-probe' })).to.equal(
      'the iommufd-probe helper is not built (/nonexistent/iommufd-probe; run scripts/build-tools.sh)',
    );
    expect(probeUnavailableReason('/dev/null', { tool: '/bin/true', devIommu: '/nonexistent/iommu' })).to.equal(
      'no /nonexistent/iommu (kernel without CONFIG_IOMMUFD, or the iommufd module is not loaded)',
    );
    expect(probeUnavailableReason('/dev/vfio/devices/vfio99', { tool: '/bin/true', devIommu: '/dev/null' })).to.equal(
      'no /dev/vfio/devices/vfio99 (the device is not bound to vfio-pci with cdev support)',
    );
  });

  it('gives up on a helper that hangs, at the deadline', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hwinfo-'));
    try {
      const tool = join(dir, 'slow-probe');
      writeFileSync(tool, '#!/bin/sh\nexec sleep 30\n');
      chmodSync(tool, 0o755);
      const r = await readHwInfo('/dev/null', { tool, devIommu: '/dev/null', timeoutMs: 300 });
      expect(r).to.deep.equal({ ok: false, reason: 'iommufd-probe hw-info --iommu /dev/null /dev/null did not finish within 300 ms' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('the native helper (built here; proven against a real /dev/iommu in the virtual lab)', () => {
    let tool: string;
    before(async function () {
      this.timeout(120_000);
      const r = await execa('sh', [join(repoRoot, 'scripts', 'build-tools.sh')], { reject: false });
      tool = probeToolPath();
      if (!probeToolBuilt(tool)) skipBecause(this, `iommufd-probe could not be built: ${r.stderr.trim() || 'no gcc?'}`);
    });

    it('is rebuilt only when its source changes', async () => {
      const again = await execa('sh', [join(repoRoot, 'scripts', 'build-tools.sh')]);
      expect(again.stderr).to.equal('');
      expect(tool).to.match(/\/tools\/x86_64\/[0-9a-f]{16}\/iommufd-probe$/);
    });

    it('rejects bad usage with exit 2 and a JSON reason', async () => {
      const cases: [string[], string][] = [
        [[], 'no mode given (hw-info, hwpt-alloc or viommu-alloc)'],
        [['probe'], 'unknown mode (expected hw-info, hwpt-alloc or viommu-alloc)'],
        [['hw-info'], 'no VFIO device cdev given (/dev/vfio/devices/vfioN)'],
        [['hw-info', '--iommu'], '--iommu needs a path'],
        [['hw-info', '/dev/null', 'extra'], 'hw-info takes no arguments after the cdev'],
        [['hwpt-alloc', '/dev/null'], 'hwpt-alloc needs at least one FLAGS value'],
        [['hwpt-alloc', '/dev/null', '0x9', 'zz'], 'a FLAGS value is not a 32-bit number (e.g. 0x9)'],
        [['hwpt-alloc', '/dev/null', '-1'], 'a FLAGS value is not a 32-bit number (e.g. 0x9)'],
        [['hwpt-alloc', '/dev/null', '0x100000000'], 'a FLAGS value is not a 32-bit number (e.g. 0x9)'],
        [['viommu-alloc', '/dev/null'], 'viommu-alloc takes one TYPE after the cdev (1: ARM_SMMUV3)'],
        [['viommu-alloc', '/dev/null', '1', '2'], 'viommu-alloc takes one TYPE after the cdev (1: ARM_SMMUV3)'],
        [['viommu-alloc', '/dev/null', 'smmu'], 'the vIOMMU TYPE is not a 32-bit number (e.g. 1)'],
      ];
      for (const [args, error] of cases) {
        const r = await execa(tool, args, { reject: false });
        expect([r.exitCode, JSON.parse(r.stdout)], args.join(' ')).to.deep.equal([2, { step: 'usage', error }]);
      }
    });

    it('names the step and errno when /dev/iommu or the cdev cannot be used', async () => {
      const missing = await execa(tool, ['hw-info', '--iommu', '/nonexistent/iommu', '/dev/null'], { reject: false });
      expect(missing.exitCode).to.equal(3);
      expect(JSON.parse(missing.stdout)).to.deep.include({ step: 'open-iommu', errno: 'ENOENT', errno_num: 2 });
      // /dev/null opens, but is no VFIO device: the bind ioctl fails, as it would on a cdev without iommufd.
      expect(await readHwInfo('/dev/null', { tool, devIommu: '/dev/null' })).to.deep.equal({
        ok: false,
        reason: 'iommufd-probe bind failed: VFIO_DEVICE_BIND_IOMMUFD /dev/null: Inappropriate ioctl for device (ENOTTY)',
      });
      expect(await probeHwptAlloc('/dev/null', [0x0, 0x8], { tool, devIommu: '/dev/null' })).to.deep.equal({
        ok: false,
        reason: 'iommufd-probe bind failed: VFIO_DEVICE_BIND_IOMMUFD /dev/null: Inappropriate ioctl for device (ENOTTY)',
      });
    });

    it('on this machine without /dev/iommu, says so', async function () {
      if (probeUnavailableReason('/dev/null', { tool }) === undefined) skipBecause(this, 'this machine has /dev/iommu: the case without it cannot be seen here');
      expect(await readHwInfo('/dev/null', { tool })).to.deep.equal({
        ok: false,
        reason: 'no /dev/iommu (kernel without CONFIG_IOMMUFD, or the iommufd module is not loaded)',
        unavailable: true,
      });
    });
  });
});
