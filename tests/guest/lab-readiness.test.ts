import { expect } from 'chai';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { rootPorts } from '../../harness/qemu/topology.js';
import { boot, useGuest } from './helpers.js';

// What the virtual lab (L1) needs from this kernel and init: the host's / as
// a read-only 9p root with Node and the reference QEMU on it, a writable
// results share, /dev/iommu, and an emulated device bound to vfio-pci with
// an iommufd character device.
describe('guest kernel as the virtual lab L1 host (TCG)', function () {
  this.timeout(180_000);
  const guest = useGuest();
  const machines = guest.machines;

  it("switches root to the host's / over 9p (read-only), runs Node there and writes results back", async () => {
    const results = join(machines.artifactsDir, 'results');
    mkdirSync(results, { recursive: true });
    const g = await boot(machines, { image: guest.image, memoryMB: 2048, rootShare: {}, resultsShare: { hostPath: results, guestPath: results } }, 60_000);
    await g.console.waitFor("harness-init: switching root to 9p share 'hostroot'", 1000, { from: 'start' });
    const a = g.agent;
    expect((await a.check('grep " / " /proc/mounts')).trim()).to.match(/^hostroot \/ 9p ro,/);
    expect(await a.check('grep -E " /(tmp|run) " /proc/mounts | cut -d" " -f2,3 | sort')).to.equal('/run tmpfs\n/tmp tmpfs\n');
    const touch = await a.run('touch /usr/harness-should-not-exist');
    expect(touch.status).to.not.equal(0);
    expect(touch.stderr).to.match(/Read-only file system/);

    const node = await a.check(`node -e 'console.log(process.version + " " + require("os").cpus().length)'`, { timeoutMs: 60_000 });
    expect(node.trim()).to.equal(`${process.version} 2`);
    await a.check(`echo "from L1 $(uname -r)" > ${results}/hello.txt`);
    expect(readFileSync(join(results, 'hello.txt'), 'utf8')).to.equal(`from L1 ${guest.image.kernelRelease}\n`);
    expect((await a.check('test -c /dev/iommu && echo ok')).trim()).to.equal('ok');
  });

  it('binds an emulated e1000e to vfio-pci: /dev/vfio/devices/vfio0 appears (iommufd cdev)', async () => {
    const g = await boot(machines, { image: guest.image, devices: [...rootPorts(1), { driver: 'e1000e', id: 'nic0', bus: 'rp0', romfile: '' }] });
    const a = g.agent;
    const bdf = '0000:01:00.0';
    await a.check(`echo vfio-pci > /sys/bus/pci/devices/${bdf}/driver_override && echo ${bdf} > /sys/bus/pci/drivers_probe`);
    expect((await a.check(`basename $(readlink /sys/bus/pci/devices/${bdf}/driver)`)).trim()).to.equal('vfio-pci');
    expect((await a.check(`ls /sys/bus/pci/devices/${bdf}/vfio-dev`)).trim()).to.equal('vfio0');
    expect((await a.check('test -c /dev/vfio/devices/vfio0 && test -c /dev/iommu && echo ok')).trim()).to.equal('ok');
  });
});
