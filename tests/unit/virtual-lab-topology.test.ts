import { expect } from 'chai';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadProfile } from '../../harness/host/profile.js';
import {
  BINDING_TEST_DEVICES,
  DEFAULT_LAB_DEVICES,
  DEFAULT_VFIO_USER_DEVICES,
  l1Bdf,
  VirtualLab,
  virtualLabDescription,
  vfioUserBus,
  withHugepageRam,
} from '../../harness/lab/virtual-lab.js';
import type { MachineDescription } from '../../harness/qemu/argv.js';
import { guestDescription } from '../../harness/guest/boot.js';
import { ARM64_LAB_PLATFORM, ARM64_ROOT_QEMU } from '../../harness/lab/platforms/arm64.js';
import { VTD_LAB_PLATFORM } from '../../harness/lab/platforms/vtd.js';
import { repoRoot } from '../../harness/util/paths.js';
import { runTmpDir } from '../../harness/util/run-tmp.js';
import { VfioUserConfigError } from '../../harness/vfio-user/preflight.js';

/** The virtual lab's L1 machine as data: no QEMU is started here. */
describe('virtual lab topology', () => {
  const image = { arch: 'x86_64', kernel: '/nonexistent/bzImage', initrd: '/nonexistent/initrd' } as never;

  it('puts the vfio-user endpoints, then the binding tests’ devices, on the root ports after the emulated devices, where the profile expects them', () => {
    const profile = loadProfile('virtual-lab');
    const all = [...DEFAULT_LAB_DEVICES.map((d) => d.name), ...DEFAULT_VFIO_USER_DEVICES.map((d) => d.name), ...BINDING_TEST_DEVICES.map((d) => d.name)];
    for (const d of profile.devices) {
      expect(all, `profile device ${d.name}`).to.include(d.name);
      expect(d.bdf, d.name).to.equal(l1Bdf(all.indexOf(d.name!)));
    }
    expect(DEFAULT_VFIO_USER_DEVICES.map((_, i) => vfioUserBus({}, i))).to.deep.equal(['rp4', 'rp5', 'rp6']);
  });

  it('describes one root port per device, vfio-user specs after the lab devices, and reserves 2 MiB pages', () => {
    const vu = [{ driver: 'vfio-user-pci', id: 'lab-pasid-endpoint', bus: 'rp4', socket: { type: 'unix', path: '/x.sock' } }];
    const d = virtualLabDescription({ image, resultsDir: '/r' }, vu);
    expect(d.devices!.filter((x) => x.driver === 'pcie-root-port')).to.have.length(8);
    expect(d.devices!.map((x) => x.id ?? x.driver).slice(8, 16)).to.deep.equal([
      'lab-e1000e', 'lab-igb', 'lab-edu', 'lab-iommu-testdev', 'lab-pasid-endpoint', 'lab-net-down', 'lab-net-up', 'lab-share',
    ]);
    expect(d.devices!.filter((x) => String(x.id).startsWith('lab-net') || x.id === 'lab-share').map((x) => x.bus)).to.deep.equal(['rp5', 'rp6', 'rp7']);
    expect(d.extraArgs!.join(' ')).to.include(`local,id=labshare,path=${join(repoRoot, 'qemu-configs')},security_model=none,readonly=on`);
    const without = virtualLabDescription({ image, resultsDir: '/r', bindingTestDevices: false }, vu);
    expect(without.devices!.filter((x) => x.driver === 'pcie-root-port')).to.have.length(5);
    expect(without.extraArgs).to.deep.equal([]);
    expect(d.append).to.include('hugepages=320');
    expect(virtualLabDescription({ image, resultsDir: '/r', hugepages: 0 }).append!.join(' ')).to.not.include('hugepages');
  });

  it('shares the host’s / read-only, the results folder writable, and the checkout at its own path', () => {
    const desc = guestDescription({ image, ...virtualLabDescription({ image, resultsDir: '/r' }) });
    const args = desc.extraArgs!.join(' ');
    expect(args).to.include('local,id=hostroot,path=/,security_model=none,multidevs=remap,readonly=on');
    expect(args).to.include('local,id=results,path=/r,security_model=none,multidevs=remap');
    expect(args).to.include(`local,id=repo,path=${repoRoot},security_model=none,multidevs=remap,readonly=on`);
    expect(desc.kernel!.append).to.include('harness.root=9p').and.include('harness.results=/mnt').and.include(`harness.share=repo:${repoRoot}`);
  });

  it('refuses an L1 intel-iommu without caching-mode before launching, and closes the servers it started', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vlab-unit-'));
    // This process's own temp folder (where the servers' socket folders go), not the shared /tmp.
    const before = new Set(readdirSync(runTmpDir()).filter((f) => f.startsWith('harness-vfio-user-')));
    let launched = false;
    try {
      const err = await VirtualLab.start(
        async () => {
          launched = true;
          throw new Error('must not launch');
        },
        { image, resultsDir: join(dir, 'results'), intelIommu: { 'scalable-mode': true, 'pasid-bits': 20 } },
      ).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(VfioUserConfigError);
      expect((err as Error).message).to.match(/vfio-user-pci lab-pasid-endpoint, lab-plain-endpoint, lab-pasid-no-tlp-prefix behind intel-iommu needs caching-mode=on, but caching-mode is not set/);
      expect(launched, 'launch called').to.equal(false);
      const after = readdirSync(runTmpDir()).filter((f) => f.startsWith('harness-vfio-user-') && !before.has(f));
      expect(after, 'vfio-user socket folders left behind').to.deep.equal([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(existsSync(dir)).to.equal(false);
  });

  it('backs an L2 with 2 MiB pages only when enough are free, saying why not', () => {
    const l2: MachineDescription = { arch: 'x86_64', machine: { type: 'q35', props: { 'kernel-irqchip': 'split' } }, memoryMB: 64 };
    const ok = withHugepageRam(l2, 32);
    expect(ok.reason).to.equal(undefined);
    expect(ok.desc.machine.props).to.deep.equal({ 'kernel-irqchip': 'split', 'memory-backend': 'l2ram' });
    expect(ok.desc.objects).to.deep.equal([{ 'qom-type': 'memory-backend-memfd', id: 'l2ram', size: 64 << 20, hugetlb: true, hugetlbsize: 2 << 20 }]);
    expect(withHugepageRam(l2, 31)).to.deep.equal({ desc: l2, reason: '31 free 2 MiB pages here, L2 needs 32' });
    expect(withHugepageRam({ ...l2, memoryMB: 65 }, 100).reason).to.equal('L2 memory 65 MB is not a whole number of 2 MiB pages');
  });

  it('is one lab for two platforms: the arm64 one has emulated endpoints only, its own profile and its root’s QEMU', async () => {
    expect(VTD_LAB_PLATFORM.describe({ image, resultsDir: '/r' }, [])).to.deep.equal(virtualLabDescription({ image, resultsDir: '/r' }));
    expect(VTD_LAB_PLATFORM.hostProfile).to.equal(join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab.yaml'));
    const arm = ARM64_LAB_PLATFORM.describe({ platform: ARM64_LAB_PLATFORM, image, resultsDir: '/r' }, []);
    expect(arm.devices!.map((x) => x.id ?? x.driver)).to.deep.equal(['rp0', 'rp1', 'lab-e1000e', 'lab-igb']);
    expect(arm.resultsShare).to.deep.equal({ hostPath: '/r', guestPath: '/mnt' });
    expect(arm.append).to.deep.equal([]);
    expect(ARM64_LAB_PLATFORM.defaultVfioUser).to.deep.equal([]);
    expect(ARM64_LAB_PLATFORM.hostProfile).to.equal(join(repoRoot, 'qemu-configs', 'hosts', 'virtual-lab-smmuv3.yaml'));
    const profile = loadProfile(ARM64_LAB_PLATFORM.hostProfile);
    expect(profile).to.include({ platform: 'smmuv3', accel: 'kvm' });
    expect(profile.devices.map((d) => [d.name, d.bdf])).to.deep.equal(ARM64_LAB_PLATFORM.defaultDevices.map((d, i) => [d.name, l1Bdf(i)]));
    // L0's QEMUs are x86 binaries: none reaches the arm64 L1.
    expect(ARM64_LAB_PLATFORM.passedEnv.filter((k) => k.includes('QEMU'))).to.deep.equal([]);
    expect(ARM64_LAB_PLATFORM.l1Env).to.deep.equal({ QEMU_AARCH64: ARM64_ROOT_QEMU, HARNESS_L2_QEMU_AARCH64: ARM64_ROOT_QEMU });
    const vu = [{ driver: 'vfio-user-pci', id: 'lab-x', bus: 'rp1' }];
    expect(() => ARM64_LAB_PLATFORM.describe({ image, resultsDir: '/r' }, vu)).to.throw(/vfioUser: the arm64 lab takes no vfio-user endpoints \(lab-x\)/);
    expect(() => ARM64_LAB_PLATFORM.describe({ image, resultsDir: '/r', intelIommu: {} }, [])).to.throw(/^intelIommu: /);
    // Nothing served: the arm64 lab starts no vfio-user server, so the launcher sees the SMMUv3 L1 straight away.
    let launched: MachineDescription | undefined;
    const err = await VirtualLab.start(
      async (d) => {
        launched = d;
        throw new Error('stop here');
      },
      { platform: ARM64_LAB_PLATFORM, image: { arch: 'aarch64', kernel: '/nonexistent/Image', initrd: '/nonexistent/initrd', root: { path: '/nonexistent/root', uefi: '/nonexistent/QEMU_EFI.fd' } } as never, resultsDir: join(runTmpDir(), 'arm64-lab-unit') },
    ).catch((e: unknown) => e);
    expect((err as Error).message).to.equal('stop here');
    expect(launched!.arch).to.equal('aarch64');
    expect(launched!.devices!.map((x) => x.driver)).to.include('arm-smmuv3').and.include('e1000e').and.not.include('vfio-user-pci');
  });
});
