import { expect } from 'chai';
import type { DeviceProperty } from '../../harness/qmp/client.js';
import { smmuAutoProperties } from '../../harness/lab/smmu.js';
import { coerceToPropertyType, ConfigError, listConfigs, loadConfig, resolveConfig, validateConfig, ViommuFeatureError } from '../../harness/viommu/configs.js';
import { featureNames } from '../../harness/viommu/features.js';
import type { QemuProbe } from '../../harness/viommu/probe.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';

/** intel-iommu's properties as the probe of each real binary listed them (tests/fixtures/qemu). */
const captured = (version: string): DeviceProperty[] =>
  (JSON.parse(readFileSync(join(repoRoot, 'tests', 'fixtures', 'qemu', `probe-x86_64-${version}.json`), 'utf8')) as { viommuProperties: { 'intel-iommu': DeviceProperty[] } })
    .viommuProperties['intel-iommu'];
const qemu11 = captured('11.1.3');
const qemu10 = captured('10.0.13');
const probeOf = (props: DeviceProperty[]): QemuProbe =>
  ({
    binary: { path: '/opt/qemu/bin/qemu-system-x86_64' },
    version: { text: 'QEMU emulator version 10.0.13' },
    drivers: { 'intel-iommu': props },
  }) as unknown as QemuProbe;

describe('vIOMMU configs and property names', () => {
  it('loads every shipped config', () => {
    const names = listConfigs();
    expect(names).to.include.members(['intel-iommu-scalable-fsts-pasid', 'arm-smmuv3-accel', 'no-viommu-q35']);
    for (const n of names) expect(loadConfig(n).name).to.equal(n);
  });

  it('maps features to 11.1 names', () => {
    const { device } = resolveConfig(loadConfig('intel-iommu-scalable-fsts-pasid'), probeOf(qemu11));
    expect(device).to.include({ driver: 'intel-iommu', 'scalable-mode': true, fsts: true, 'pasid-bits': 20, 'caching-mode': true });
  });

  it('maps features to 10.0 names, PASID width becoming the x-pasid-mode bool', () => {
    const { device, notes } = resolveConfig(loadConfig('intel-iommu-scalable-fsts-pasid'), probeOf(qemu10));
    expect(device).to.include({ 'x-scalable-mode': true, 'x-flts': true, 'x-pasid-mode': true });
    expect(device).to.not.have.any.keys('fsts', 'pasid-bits');
    expect(notes.join()).to.match(/x-pasid-mode is a bool/);
    expect(featureNames('intel-iommu', qemu10)).to.include({ fsts: 'x-flts', scalableMode: 'x-scalable-mode', pasidBits: 'x-pasid-mode' });
  });

  it('names the binary, version and the names tried when a feature is missing', () => {
    const noFsts = qemu11.filter((p) => p.name !== 'fsts');
    // trixie's 10.0.13 has no svm under any name.
    expect(() => resolveConfig({ ...loadConfig('intel-iommu-scalable-fsts'), viommu: { driver: 'intel-iommu', features: { svm: true } } }, probeOf(qemu10))).to.throw(
      ViommuFeatureError,
      /has no intel-iommu property for shared virtual memory \(tried svm\)$/,
    );
    expect(() => resolveConfig(loadConfig('intel-iommu-scalable-fsts'), probeOf(noFsts))).to.throw(
      ViommuFeatureError,
      'QEMU /opt/qemu/bin/qemu-system-x86_64 (QEMU emulator version 10.0.13) has no intel-iommu property for first-stage translation (tried fsts, x-flts, flts)',
    );
  });

  it('in exact mode refuses a spelling that would change the value (a width as 10.0\'s x-pasid-mode bool), saying why', () => {
    const cfg = { ...loadConfig('intel-iommu-scalable-fsts'), viommu: { driver: 'intel-iommu' as const, features: { scalableMode: true, pasidBits: 21 } } };
    expect(resolveConfig(cfg, probeOf(qemu10)).device).to.include({ 'x-pasid-mode': true });
    expect(resolveConfig(cfg, probeOf(qemu11), { exact: true }).device).to.include({ 'pasid-bits': 21 });
    expect(() => resolveConfig(cfg, probeOf(qemu10), { exact: true })).to.throw(
      ViommuFeatureError,
      /no intel-iommu property for PASID support \(width in bits\) \(tried pasid-bits, x-pasid-mode, pasid; x-pasid-mode is a bool: .*so 21 cannot reach QEMU as given\)/,
    );
  });

  it('converts values to the property types the QEMU reports', () => {
    expect(coerceToPropertyType(true, 'OnOffAuto')).to.equal('on');
    expect(coerceToPropertyType(20, 'SsidSizeMode')).to.equal('20');
    expect(coerceToPropertyType('on', 'bool')).to.equal(true);
    expect(coerceToPropertyType('48', 'uint8')).to.equal(48);
    expect(coerceToPropertyType(true, 'bool')).to.equal(true);
  });

  it('refuses an unknown config name, listing the known ones', () => {
    expect(() => loadConfig('intel-iommu-nope')).to.throw(ConfigError, /unknown vIOMMU config "intel-iommu-nope" \(known: .*intel-iommu-legacy/);
  });

  it('names the bad field of a malformed config', () => {
    const base = { description: 'd', arch: 'x86_64', machine: { type: 'q35' } };
    expect(() => validateConfig('c', { ...base, arch: 'riscv64' })).to.throw(ConfigError, /field arch must be "x86_64" or "aarch64", not "riscv64"/);
    expect(() => validateConfig('c', { ...base, viommu: { driver: 'amd-iommu', features: {} } })).to.throw(ConfigError, /field viommu.driver/);
    expect(() => validateConfig('c', { ...base, viommu: { driver: 'intel-iommu', features: { flts: true } } })).to.throw(
      ConfigError,
      /field viommu.features.flts is not a intel-iommu feature/,
    );
  });

  it('names the arm-smmuv3 accel properties a config leaves auto (those that make QEMU need a cold-plugged VFIO device)', () => {
    expect(smmuAutoProperties(loadConfig('arm-smmuv3-accel'))).to.deep.equal(['ats', 'ril', 'ssidsize', 'oas']);
    expect(smmuAutoProperties(loadConfig('arm-smmuv3-accel-ssid'))).to.deep.equal(['ats', 'ril', 'oas']);
    expect(smmuAutoProperties(loadConfig('arm-smmuv3-accel-explicit'))).to.deep.equal([]);
    expect(smmuAutoProperties(loadConfig('arm-smmuv3-emulated')), 'accel=off has no auto mode').to.deep.equal([]);
    expect(smmuAutoProperties(loadConfig('intel-iommu-scalable-fsts'))).to.deep.equal([]);
  });

  it('checks arm-smmuv3 accel property values when a config loads, naming the field', () => {
    const arm = (features: Record<string, unknown>) => ({ description: 'd', arch: 'aarch64', machine: { type: 'virt' }, viommu: { driver: 'arm-smmuv3', features } });
    expect(() => validateConfig('c', arm({ oas: 40 }))).to.throw(ConfigError, /field viommu.features.oas must be 44 or 48 or "auto", not 40/);
    expect(() => validateConfig('c', arm({ ssidsize: 21 }))).to.throw(ConfigError, /field viommu.features.ssidsize must be a whole number of bits from 0 to 20 or "auto", not 21/);
    expect(() => validateConfig('c', arm({ ats: 'yes' }))).to.throw(ConfigError, /field viommu.features.ats must be on, off, auto or a boolean, not "yes"/);
    expect(() => validateConfig('c', arm({ cmdqv: 1 }))).to.throw(ConfigError, /field viommu.features.cmdqv must be on, off, auto or a boolean, not 1/);
    expect(validateConfig('c', arm({ ats: false, ril: 'auto', oas: 48, ssidsize: 0, cmdqv: 'off' })).viommu!.features).to.include({ oas: 48, ssidsize: 0 });
    expect(loadConfig('arm-smmuv3-accel-explicit').viommu!.features).to.include({ ats: 'off', ril: 'off', oas: 44, ssidsize: 0, cmdqv: 'off' });
  });
});
