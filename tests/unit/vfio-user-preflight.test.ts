import { expect } from 'chai';
import { checkVfioUserNeedsCachingMode, VfioUserConfigError, type MachineConfigLike } from '../../harness/vfio-user/preflight.js';

const vfioUser = { driver: 'vfio-user-pci', id: 'vu0', bus: 'rp0', socket: { type: 'unix', path: '/tmp/x/dev.sock' } };
const rootPort = { driver: 'pcie-root-port', id: 'rp0', chassis: 1 };

function config(iommu: Record<string, unknown> | undefined, extra: Partial<MachineConfigLike> = {}): MachineConfigLike {
  return { machine: { type: 'q35' }, devices: [...(iommu ? [{ driver: 'intel-iommu', ...iommu }] : []), rootPort, vfioUser], ...extra };
}

describe('vfio-user pre-launch check: intel-iommu caching mode', () => {
  it('refuses intel-iommu without caching-mode, naming the device and the fix', () => {
    const e = checkVfioUserNeedsCachingMode(config({}));
    expect(e).to.be.instanceOf(VfioUserConfigError);
    expect(e!.message).to.match(/^vfio-user-pci vu0 behind intel-iommu needs caching-mode=on, but caching-mode is not set \(default off\)/);
    expect(e!.message).to.match(/requires caching mode/).and.match(/Add caching-mode=on to the intel-iommu device/);
  });

  it('refuses an explicit caching-mode=off and says so', () => {
    expect(checkVfioUserNeedsCachingMode(config({ 'caching-mode': false }))?.message).to.match(/but caching-mode=false/);
  });

  it('accepts caching-mode true in JSON syntax, and on/yes/true in key=value syntax', () => {
    expect(checkVfioUserNeedsCachingMode(config({ 'caching-mode': true }))).to.equal(undefined);
    for (const v of ['on', 'yes', 'true', 'ON']) {
      expect(checkVfioUserNeedsCachingMode({ devices: [vfioUser], extraArgs: ['-device', `intel-iommu,caching-mode=${v}`] }), v).to.equal(undefined);
    }
  });

  it('refuses the string "on" in JSON syntax, which QEMU rejects as a type error', () => {
    // QEMU 11.1.3: Invalid parameter type for 'caching-mode', expected: boolean
    expect(checkVfioUserNeedsCachingMode(config({ 'caching-mode': 'on' }))?.message).to.match(/caching-mode is the string "on" \(JSON device syntax needs true\)/);
  });

  it('has nothing to say without intel-iommu or without a vfio-user device', () => {
    expect(checkVfioUserNeedsCachingMode(config(undefined))).to.equal(undefined);
    expect(checkVfioUserNeedsCachingMode({ devices: [{ driver: 'intel-iommu' }, { driver: 'e1000e' }] })).to.equal(undefined);
  });

  it('reads -device and -global from extra arguments, in key=value and JSON syntax', () => {
    const kv: MachineConfigLike = { devices: [vfioUser], extraArgs: ['-device', 'intel-iommu,intremap=on,caching-mode=on'] };
    expect(checkVfioUserNeedsCachingMode(kv)).to.equal(undefined);
    const kvOff: MachineConfigLike = { devices: [vfioUser], extraArgs: ['-device', 'intel-iommu,intremap=on'] };
    expect(checkVfioUserNeedsCachingMode(kvOff)).to.be.instanceOf(VfioUserConfigError);
    const json: MachineConfigLike = { extraArgs: ['-device', '{"driver":"intel-iommu"}', '-device', JSON.stringify(vfioUser)] };
    expect(checkVfioUserNeedsCachingMode(json)?.message).to.match(/vfio-user-pci vu0/);
    const global: MachineConfigLike = { devices: [{ driver: 'intel-iommu' }, vfioUser], extraArgs: ['-global', 'intel-iommu.caching-mode=on'] };
    expect(checkVfioUserNeedsCachingMode(global)).to.equal(undefined);
    const globals: MachineConfigLike = { devices: [{ driver: 'intel-iommu' }, vfioUser], globals: [{ driver: 'intel-iommu', property: 'caching-mode', value: true }] };
    expect(checkVfioUserNeedsCachingMode(globals)).to.equal(undefined);
  });

  it('lets the device property win over a -global, as QEMU does', () => {
    const c: MachineConfigLike = { devices: [{ driver: 'intel-iommu', 'caching-mode': 'off' }, vfioUser], globals: [{ driver: 'intel-iommu', property: 'caching-mode', value: 'on' }] };
    expect(checkVfioUserNeedsCachingMode(c)).to.be.instanceOf(VfioUserConfigError);
  });

  it('has nothing to say when the root bus bypasses the IOMMU', () => {
    const c = config({}, { machine: { type: 'q35', props: { 'default-bus-bypass-iommu': true } } });
    expect(checkVfioUserNeedsCachingMode(c)).to.equal(undefined);
  });
});
