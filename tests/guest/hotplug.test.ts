import { expect } from 'chai';
import type { Agent } from '../../harness/guest/agent.js';
import { describeCaps, findStdCap, walkPciCaps } from '../../harness/pci/caps.js';
import { NATIVE_PCIE_HOTPLUG, rootPorts } from '../../harness/qemu/topology.js';
import { boot, useGuest } from './helpers.js';

// rootPorts(2) puts rp0 at 00:02.0; the firmware gives its secondary bus
// number 1, so a device on rp0 is 0000:01:00.0 in the guest.
const BDF = '0000:01:00.0';
const PORT = '0000:00:02.0';

/**
 * Waits in the guest until the root port's power indicator is on (PCIe Slot
 * Control bits 9:8 = 01): pciehp blinks it while it powers a slot up or down,
 * and QEMU refuses device_del meanwhile ("guest is busy (power indicator
 * blinking)"). The guest polls its own config space, for at most `seconds`.
 */
async function waitPowerIndicatorOn(a: Agent, seconds = 10): Promise<void> {
  const exp = findStdCap(walkPciCaps(await a.readFile(`/sys/bus/pci/devices/${PORT}/config`)), 'EXP');
  if (!exp) throw new Error(`root port ${PORT} has no PCIe capability`);
  const sltctl = exp.offset + 0x18;
  const script = [
    `cfg=/sys/bus/pci/devices/${PORT}/config; i=0`,
    `while [ $i -lt ${seconds * 20} ]; do`,
    `  v=$(hexdump -s ${sltctl} -n 2 -e '1/2 "%u"' $cfg)`,
    '  [ $(( (v >> 8) & 3 )) -eq 1 ] && exit 0',
    '  sleep 0.05; i=$((i + 1))',
    'done',
    'echo "power indicator of $cfg still not on: slot control $v" >&2; exit 1',
  ].join('\n');
  await a.check(script, { timeoutMs: (seconds + 5) * 1000 });
}

describe('PCIe hot-plug seen from a running guest (TCG)', function () {
  this.timeout(120_000);
  const guest = useGuest();
  const machines = guest.machines;

  for (const native of [false, true]) {
    const how = native ? 'native PCIe hot-plug (pciehp)' : 'ACPI hot-plug (q35 default)';
    it(`${how}: device_add appears in the guest with its config space; device_del is released by the guest, then DEVICE_DELETED`, async () => {
      const g = await boot(machines, { image: guest.image, devices: rootPorts(2), ...(native ? { globals: [NATIVE_PCIE_HOTPLUG] } : {}) });
      const a = g.agent;
      expect((await a.run(`test -e /sys/bus/pci/devices/${BDF}`)).status, `${BDF} before device_add`).to.equal(1);

      await g.machine.qmp.deviceAdd({ driver: 'e1000e', id: 'hp0', bus: 'rp0', romfile: '' });
      // The kernel logs the new function when it enumerates it.
      await g.console.waitFor(`pci ${BDF}: [8086:10d3] type 00 class 0x020000 PCIe Endpoint`, 30_000);
      if (native) await g.console.waitFor(/pciehp: Slot\(1\): (Card present|Link Up)/, 1000, { from: 'start' });
      const ids = (await a.check(`cat /sys/bus/pci/devices/${BDF}/vendor /sys/bus/pci/devices/${BDF}/device`)).split('\n');
      expect(ids.slice(0, 2)).to.deep.equal(['0x8086', '0x10d3']);
      const config = await a.readFile(`/sys/bus/pci/devices/${BDF}/config`);
      expect(config.length).to.equal(4096);
      const caps = walkPciCaps(config);
      expect(describeCaps(caps)).to.equal('PM@0xc8 MSI@0xd0 EXP@0xe0 MSIX@0xa0 | ERR@0x100 DSN@0x140');
      expect(await a.check(`readlink /sys/bus/pci/devices/${BDF}/iommu_group`)).to.match(/iommu_groups\/\d+/);

      if (native) await waitPowerIndicatorOn(a);
      const deleted = await g.machine.qmp.deviceDel('hp0', 30_000);
      expect(deleted.data).to.include({ device: 'hp0', path: '/machine/peripheral/hp0' });
      // QEMU unplugs only once the guest has let go, so the function is gone now.
      expect((await a.run(`test -e /sys/bus/pci/devices/${BDF}`)).status, `${BDF} after DEVICE_DELETED`).to.equal(1);
      if (native) await g.console.waitFor(/pciehp: Slot\(1\): Button press: will power off/, 1000, { from: 'start' });

      // The slot works again: a second add is seen too.
      await g.machine.qmp.deviceAdd({ driver: 'e1000e', id: 'hp1', bus: 'rp0', romfile: '' });
      await g.console.waitFor(`pci ${BDF}: [8086:10d3] type 00 class 0x020000 PCIe Endpoint`, 30_000);
      if (native) await waitPowerIndicatorOn(a);
      await g.machine.qmp.deviceDel('hp1', 30_000);
      expect((await a.run(`test -e /sys/bus/pci/devices/${BDF}`)).status).to.equal(1);
    });
  }
});
