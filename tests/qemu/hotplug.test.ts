import { expect } from 'chai';
import { QmpCommandError } from '../../harness/qmp/errors.js';
import type { MachineDescription } from '../../harness/qemu/argv.js';
import type { Machine } from '../../harness/qemu/machine.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../../harness/qemu/topology.js';
import { useMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { DeadlineError } from '../../harness/util/deadline.js';

/** ids of the user-created devices (QOM /machine/peripheral). */
async function peripherals(m: Machine): Promise<string[]> {
  return (await m.qmp.qomList('/machine/peripheral')).filter((p) => p.type.startsWith('child<')).map((p) => p.name);
}

function q35(nativeHotplug: boolean): MachineDescription {
  return {
    arch: 'x86_64',
    machine: { type: 'q35' },
    paused: true,
    devices: rootPorts(2),
    ...(nativeHotplug ? { globals: [NATIVE_PCIE_HOTPLUG] } : {}),
  };
}

describe('PCIe hot-plug over QMP (no guest, -S)', function () {
  before(async function () {
    await requireQemu(this, 'x86_64');
  });
  const machines = useMachines();

  it('device_add puts an e1000e behind a root port; device_del completes with DEVICE_DELETED (native PCIe hot-plug)', async () => {
    const m = await machines.launch(q35(true));
    await m.qmp.deviceAdd({ driver: 'e1000e', id: 'nic0', bus: 'rp1', romfile: '' });
    // Under -S no firmware has numbered the root ports' secondary buses, so
    // query-pci cannot reach behind them yet; QOM shows where the device sits.
    expect(await m.qmp.qomGet('/machine/peripheral/nic0', 'type')).to.equal('e1000e');
    expect(await m.qmp.qomGet('/machine/peripheral/nic0', 'parent_bus')).to.equal('/machine/peripheral/rp1/rp1');
    expect(await m.qmp.qomGet('/machine/peripheral/nic0', 'hotplugged')).to.equal(true);

    const event = await m.qmp.deviceDel('nic0', 5000);
    expect(event.data).to.include({ device: 'nic0', path: '/machine/peripheral/nic0' });
    expect(await peripherals(m)).to.not.include('nic0');
  });

  it('repeats add and delete on the same port (10 cycles)', async () => {
    const m = await machines.launch(q35(true));
    for (let i = 0; i < 10; i++) {
      await m.qmp.deviceAdd({ driver: 'e1000e', id: `nic${i}`, bus: 'rp0', romfile: '' });
      await m.qmp.deviceDel(`nic${i}`, 5000);
    }
    expect((await peripherals(m)).filter((id) => id.startsWith('nic'))).to.deep.equal([]);
  });

  it('with ACPI hot-plug (q35 default) device_del is accepted but, with no guest to eject, DEVICE_DELETED never comes', async () => {
    const m = await machines.launch(q35(false));
    await m.qmp.deviceAdd({ driver: 'e1000e', id: 'nic0', bus: 'rp0', romfile: '' });
    const err = await m.qmp.deviceDel('nic0', 1000).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(DeadlineError);
    expect(await peripherals(m)).to.include('nic0');
  });

  it('types device_add errors: unknown driver, unknown bus, duplicate id', async () => {
    const m = await machines.launch(q35(true));
    const errOf = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as QmpCommandError);
    const badDriver = await errOf(m.qmp.deviceAdd({ driver: 'no-such-nic', id: 'x' }));
    expect(badDriver).to.be.instanceOf(QmpCommandError);
    expect(badDriver!.errorClass).to.equal('GenericError');
    expect(badDriver!.desc).to.match(/'no-such-nic' is not a valid device model name/);
    const badBus = await errOf(m.qmp.deviceAdd({ driver: 'e1000e', id: 'x', bus: 'rp9' }));
    expect(badBus!.desc).to.match(/Bus 'rp9' not found/);
    await m.qmp.deviceAdd({ driver: 'e1000e', id: 'dup', bus: 'rp0', romfile: '' });
    const dup = await errOf(m.qmp.deviceAdd({ driver: 'e1000e', id: 'dup', bus: 'rp1', romfile: '' }));
    expect(dup!.desc).to.match(/Duplicate device ID 'dup'/);
    const delMissing = await errOf(m.qmp.execute('device_del', { id: 'ghost' }));
    expect(delMissing!.errorClass).to.equal('DeviceNotFound');
  });
});
