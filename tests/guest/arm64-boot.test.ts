import { expect } from 'chai';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootGuest, type BootedGuest } from '../../harness/guest/boot.js';
import { requireGuestImage, type GuestImage } from '../../harness/guest/image.js';
import { decodeSmmuIdr, parseHwInfoJson, parseHwptAllocJson } from '../../harness/host/hwinfo.js';
import { arm64L1Description } from '../../harness/lab/platforms/arm64.js';
import { skipBecause } from '../../harness/report/skip.js';
import { useSuiteMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { nativeToolPath } from '../../harness/util/native-tools.js';
import { shellQuote } from '../../harness/util/shell.js';

/**
 * The first link of the arm64 virtual lab (issue 10): an aarch64 L1 booted
 * under TCG through the harness's own guest code (UEFI, ACPI, GICv3, EL2, an
 * emulated SMMUv3 with nesting), its root the arm64 root over read-only 9p,
 * running that root's Node 24 natively, with /dev/iommu, and the aarch64
 * iommufd-probe asking L1's kernel about an e1000e bound to vfio-pci.
 */
describe('arm64 L1 guest (TCG): UEFI, ACPI, SMMUv3, the arm64 root over 9p', function () {
  this.timeout(300_000);
  const machines = useSuiteMachines();
  let image: GuestImage;
  let g: BootedGuest;
  const bdf = '0000:01:00.0';

  before(async function () {
    await requireQemu(this, 'aarch64');
    image = requireGuestImage(this, 'aarch64');
    g = await bootGuest((d) => machines.launch(d, { name: 'l1' }), { image, ...arm64L1Description() }, { readyTimeoutMs: 120_000 });
    writeFileSync(
      join(machines.artifactsDir, 'boot-timing.json'),
      JSON.stringify({ launchMs: g.launchMs, agentReadyMs: g.agentReadyMs, guestUptimeS: g.guestUptimeS }) + '\n',
    );
  });

  it('boots the aarch64 kernel through UEFI with ACPI and reaches the agent in the arm64 root', async () => {
    console.log(`      arm64 L1: launch ${g.launchMs} ms, launch to agent ${g.agentReadyMs} ms (guest uptime ${g.guestUptimeS} s)`);
    // Issue 10's target is 15 s; 9.6-12 s were seen with the host's 2 cores
    // at a load of 8, hence a bound with room for that, not for a hang.
    expect(g.agentReadyMs, 'launch to agent (ms)').to.be.at.most(30_000);
    expect(g.agent.kernelRelease).to.equal(image.kernelRelease);
    await g.console.waitFor(/UEFI firmware \(version /, 1000, { from: 'start' });
    await g.console.waitFor("harness-init: switching root to 9p share 'hostroot'", 1000, { from: 'start' });
    expect((await g.agent.check('uname -m')).trim()).to.equal('aarch64');
    // UEFI's loader puts its own initrd=... first.
    expect(await g.agent.check('cat /proc/cmdline')).to.match(/(^| )console=ttyAMA0 .*acpi=force /);
    // Booted by UEFI through the EFI stub, with ACPI (IORT describes the SMMU), not a device tree.
    const dmesg = await g.agent.check('dmesg');
    writeFileSync(join(machines.artifactsDir, 'dmesg.txt'), dmesg);
    expect(dmesg).to.match(/efi: EFI v\d/);
    expect(dmesg).to.match(/ACPI: IORT 0x[0-9A-F]+ /);
    expect((await g.agent.check('test -d /sys/firmware/devicetree/base && echo dt || echo acpi')).trim()).to.equal('acpi');
    expect((await g.agent.check('grep " / " /proc/mounts')).trim()).to.match(/^hostroot \/ 9p ro,/);
    // The root is the arm64 root, not L0's /: its own Debian packages list is there.
    expect((await g.agent.check('test -f /.packages && grep -c . /.packages')).trim()).to.match(/^\d+$/);
  });

  it("runs the arm64 root's Node 24 natively", async () => {
    const t0 = Date.now();
    const out = await g.agent.check(`node -e 'console.log(process.version, process.arch)'`, { timeoutMs: 60_000 });
    console.log(`      node -e in L1: ${Date.now() - t0} ms`);
    const [version, arch] = out.trim().split(' ');
    expect(version).to.match(/^v24\./);
    expect(arch).to.equal('arm64');
    // The Debian version (24.22.2+dfsg+~cs...-1) begins with Node's own.
    expect(image.root!.manifest.nodeVersion.split(/[+~-]/)[0], 'Debian nodejs version in the root manifest').to.equal(version!.slice(1));
  });

  it("has KVM (VHE at EL2) and runs the root's own qemu-system-aarch64, L2's QEMU, natively", async () => {
    expect(await g.agent.check('dmesg')).to.match(/kvm \[\d+\]: VHE mode initialized successfully/);
    expect((await g.agent.check('test -c /dev/kvm && echo ok')).trim()).to.equal('ok');
    const t0 = Date.now();
    const v = await g.agent.check('/usr/bin/qemu-system-aarch64 --version', { timeoutMs: 60_000 });
    console.log(`      qemu-system-aarch64 --version in L1: ${Date.now() - t0} ms`);
    // "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)": the root manifest's package.
    expect(v.split('\n')[0]).to.equal(`QEMU emulator version ${image.root!.manifest.qemuVersion.replace(/^\d+:/, '').split(/[+~-]/)[0]} (Debian ${image.root!.manifest.qemuVersion})`);
    const accels = await g.agent.check('/usr/bin/qemu-system-aarch64 -accel help', { timeoutMs: 60_000 });
    expect(accels.split('\n')).to.include('kvm');
  });

  it('has /dev/iommu and an SMMUv3 the kernel probed from IORT', async () => {
    expect((await g.agent.check('test -c /dev/iommu && echo ok')).trim()).to.equal('ok');
    const dmesg = await g.agent.check('dmesg');
    expect(dmesg).to.match(/arm-smmu-v3 arm-smmu-v3\.\d+\.auto: /);
    expect(dmesg).to.not.match(/arm-smmu-v3.*(failed|probe of .* failed)/);
    // The e1000e sits behind it: the kernel put it in an IOMMU group.
    expect((await g.agent.check(`basename $(readlink /sys/bus/pci/devices/${bdf}/iommu_group)`)).trim()).to.match(/^\d+$/);
  });

  it("runs the aarch64 iommufd-probe on an e1000e bound to vfio-pci: SMMUv3 hw info, NEST_PARENT accepted, NEST_PARENT|PASID refused", async function () {
    const probe = nativeToolPath('iommufd-probe', 'aarch64');
    if (!existsSync(probe)) skipBecause(this, `the aarch64 iommufd-probe is not built (${probe}; run scripts/build-tools.sh)`);
    await g.agent.check(`echo vfio-pci > /sys/bus/pci/devices/${bdf}/driver_override && echo ${bdf} > /sys/bus/pci/drivers_probe`);
    expect((await g.agent.check(`basename $(readlink /sys/bus/pci/devices/${bdf}/driver)`)).trim()).to.equal('vfio-pci');
    const cdev = `/dev/vfio/devices/${(await g.agent.check(`ls /sys/bus/pci/devices/${bdf}/vfio-dev`)).trim()}`;

    const info = parseHwInfoJson(await g.agent.check(`${shellQuote(probe)} hw-info ${cdev}`));
    if (!info.ok) expect.fail(info.reason);
    expect(info.value.outDataTypeName).to.equal('ARM_SMMUV3');
    const idr = decodeSmmuIdr(info.value.smmuv3!.idr);
    expect({ s1p: idr.s1p, s2p: idr.s2p }, 'stage=nested: both stages').to.deep.equal({ s1p: true, s2p: true });

    const alloc = parseHwptAllocJson(await g.agent.check(`${shellQuote(probe)} hwpt-alloc ${cdev} 0x0 0x1 0x9`));
    if (!alloc.ok) expect.fail(alloc.reason);
    const answers = Object.fromEntries(alloc.value.results.map((r) => [`0x${r.flags.toString(16)}`, r.ok ? 'ok' : r.errno]));
    console.log(`      L1 HWPT_ALLOC answers: ${JSON.stringify(answers)}`);
    expect(answers).to.deep.equal({ '0x0': 'ok', '0x1': 'ok', '0x9': 'EOPNOTSUPP' });
  });
});
