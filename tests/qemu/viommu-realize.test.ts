import { expect } from 'chai';
import type { PropValue } from '../../harness/qemu/argv.js';
import type { Arch } from '../../harness/qemu/binary.js';
import { LaunchError } from '../../harness/qemu/machine.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu, resolveConfigOrSkip } from '../../harness/testing/prereqs.js';
import type { ViommuDriver } from '../../harness/viommu/configs.js';
import { probeArch } from '../../harness/viommu/probe.js';

/**
 * Realize errors (facts sheet §2 and §4) as a variant table, kselftest
 * FIXTURE_VARIANT style: each row is a vIOMMU in feature terms, mapped to this
 * QEMU's property names, and the message QEMU must refuse it with. Wording that
 * moved with the property rename (fsts / x-flts / flts) is matched either way.
 */
interface Variant {
  driver: ViommuDriver;
  features: Record<string, PropValue>;
  message: RegExp;
  /** The row is about the value itself: a QEMU that can only take it converted (a width as a bool) skips. */
  exact?: boolean;
}

const FS = '(fsts|x-flts|flts)';
const intel: Record<string, Variant> = {
  'fsts without scalable mode': { driver: 'intel-iommu', features: { fsts: true }, message: new RegExp(`${FS} is only available in scalable mode`) },
  'pasid-bits without scalable mode': { driver: 'intel-iommu', features: { pasidBits: 20 }, message: /Need to set scalable mode for PASID/ },
  'PASID width above 20': {
    driver: 'intel-iommu',
    features: { scalableMode: true, pasidBits: 21 },
    message: /PASID width 21 exceeds Max PASID Width 20 allowed in PCI spec/,
    exact: true,
  },
  'fsts with aw-bits 39': {
    driver: 'intel-iommu',
    features: { scalableMode: true, fsts: true, awBits: 39 },
    message: new RegExp(`Scalable mode\\(${FS}=on\\): supported value for aw-bits is: 48`),
  },
  'scalable mode with aw-bits 50': {
    driver: 'intel-iommu',
    features: { scalableMode: true, awBits: 50 },
    message: new RegExp(`Scalable mode\\(${FS}=off\\): supported values for aw-bits are: 39, 48`),
  },
  'legacy mode with aw-bits 50': { driver: 'intel-iommu', features: { awBits: 50 }, message: /Legacy mode: supported values for aw-bits are: 39, 48/ },
  'svm without device-iotlb': { driver: 'intel-iommu', features: { svm: true }, message: /Need to set device IOTLB for svm/ },
  'svm without fsts': { driver: 'intel-iommu', features: { svm: true, deviceIotlb: true }, message: new RegExp(`Need to set ${FS} for svm`) },
  'svm with fsts but no PASID': {
    driver: 'intel-iommu',
    features: { svm: true, deviceIotlb: true, scalableMode: true, fsts: true },
    message: /Need to set PASID support for svm/,
  },
  'eim=on with intremap=off': { driver: 'intel-iommu', features: { eim: 'on', intremap: 'off' }, message: /eim=on cannot be selected without intremap=on/ },
};

const smmu: Record<string, Variant> = {
  'accel=on under TCG': { driver: 'arm-smmuv3', features: { primaryBus: 'pcie.0', accel: true }, message: /SMMUv3 accel=on requires KVM with kernel-irqchip=on support/ },
  'ats without accel': { driver: 'arm-smmuv3', features: { primaryBus: 'pcie.0', ats: true }, message: /ats can only be enabled if accel=on/ },
  'ssidsize without accel': { driver: 'arm-smmuv3', features: { primaryBus: 'pcie.0', ssidsize: 4 }, message: /ssidsize can only be greater than 0 bits if accel=on/ },
  'oas 48 without accel': { driver: 'arm-smmuv3', features: { primaryBus: 'pcie.0', oas: 48 }, message: /oas must be 44 bits when accel=off/ },
  'cmdqv without accel': { driver: 'arm-smmuv3', features: { primaryBus: 'pcie.0', cmdqv: 'on' }, message: /cmdqv can only be enabled if accel=on/ },
  'ril=off without accel': { driver: 'arm-smmuv3', features: { primaryBus: 'pcie.0', ril: false }, message: /ril can only be disabled if accel=on/ },
  'no primary bus': { driver: 'arm-smmuv3', features: {}, message: /SMMU is not attached to any PCI bus!/ },
};

const machines: Record<ViommuDriver, { arch: Arch; type: string; props?: Record<string, string> }> = {
  'intel-iommu': { arch: 'x86_64', type: 'q35', props: { 'kernel-irqchip': 'split' } },
  'arm-smmuv3': { arch: 'aarch64', type: 'virt' },
};

function realizeSuite(title: string, table: Record<string, Variant>, arch: Arch): void {
  describe(title, function () {
    before(async function () {
      await requireQemu(this, arch);
    });
    const fixture = useMachines();

    for (const [name, v] of Object.entries(table)) {
      it(`refuses ${name}`, async function () {
        const probe = await probeArch(arch);
        const { device } = resolveConfigOrSkip(
          this,
          { name, description: name, arch, machine: machines[v.driver], viommu: { driver: v.driver, features: v.features } },
          probe,
          { exact: v.exact ?? false },
        );
        const mt = machines[v.driver];
        const err = await fixture
          .launch({ arch, machine: { type: mt.type, ...(mt.props ? { props: mt.props } : {}) }, paused: true, devices: [device!] })
          .catch((e: unknown) => e);
        expect(err, 'QEMU accepted a configuration it must refuse').to.be.instanceOf(LaunchError);
        const e = err as LaunchError;
        expect(e.exit?.code).to.equal(1);
        // QEMU names the offending option before the message.
        expect(e.stderr).to.match(new RegExp(`-device \\{"driver":"${v.driver}"[^\\n]*: ${v.message.source}`));
      });
    }
  });
}

realizeSuite('intel-iommu realize errors (q35, TCG)', intel, 'x86_64');
realizeSuite('arm-smmuv3 realize errors (virt, TCG)', smmu, 'aarch64');

describe('vIOMMU combinations QEMU accepts', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const fixture = useMachines();

  // fsts=on does not need pasid-bits, and pasid-bits does not need fsts (facts §2).
  const accepted: Array<Record<string, PropValue>> = [
    { scalableMode: true, fsts: true },
    { scalableMode: true, pasidBits: 20 },
    { scalableMode: true, fsts: true, pasidBits: 20, svm: true, deviceIotlb: true },
  ];
  for (const features of accepted) {
    it(`accepts ${Object.entries(features).map(([k, v]) => `${k}=${v}`).join(',')}`, async function () {
      const probe = await probeArch('x86_64');
      const cfg = { name: 'x', description: 'x', arch: 'x86_64' as const, machine: { type: 'q35' }, viommu: { driver: 'intel-iommu' as const, features } };
      const { device } = resolveConfigOrSkip(this, cfg, probe);
      const m = await fixture.launch({ arch: 'x86_64', machine: { type: 'q35', props: { 'kernel-irqchip': 'split' } }, paused: true, devices: [device!] });
      expect(await m.qmp.qomGet('/machine/peripheral/viommu0', 'realized')).to.equal(true);
    });
  }
});
