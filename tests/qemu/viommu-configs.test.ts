import { expect } from 'chai';
import { kvmUnavailableReason } from '../../harness/host/kvm.js';
import { skipBecause } from '../../harness/report/skip.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu, resolveConfigOrSkip } from '../../harness/testing/prereqs.js';
import { describeMachine, listConfigs, loadConfig } from '../../harness/viommu/configs.js';
import { probeArch } from '../../harness/viommu/probe.js';

/** Every named config in qemu-configs/viommu launches, and QOM shows what was asked. */
describe('named vIOMMU configs on real QEMU', function () {
  const fixture = useMachines();

  for (const name of listConfigs()) {
    const config = loadConfig(name);
    it(`${name}: realizes, and qom-get shows the asked properties`, async function () {
      await requireQemu(this, config.arch);
      if (config.requires?.includes('kvm')) {
        const why = kvmUnavailableReason(config.arch);
        if (why) skipBecause(this, `${name} needs KVM: ${why}`);
      }
      const probe = await probeArch(config.arch);
      // A vIOMMU or feature this binary lacks is a skip naming it (before the launch, which would fail).
      const { device } = resolveConfigOrSkip(this, config, probe);
      const m = await fixture.launch({ ...describeMachine(config, probe), paused: true, ...(config.requires?.includes('kvm') ? { accel: 'kvm' } : {}) });
      if (!device) {
        expect((await m.qmp.qomList('/machine/peripheral')).map((p) => p.name)).to.not.include('viommu0');
        return;
      }
      const path = `/machine/peripheral/${device.id}`;
      expect(await m.qmp.qomGet(path, 'type')).to.equal(device.driver);
      for (const [prop, want] of Object.entries(device)) {
        if (prop === 'driver' || prop === 'id') continue;
        const got = await m.qmp.qomGet(path, prop);
        // OnOffAuto properties read back as "on"/"off"; link-like ones (primary-bus) as a name.
        expect(got, `${path}.${prop}`).to.satisfy((g: unknown) => g === want || String(g) === String(want) || (prop === 'primary-bus' && String(g).includes(String(want))));
      }
    });
  }
});
