import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { findGuestImage, readKernelConfig, type GuestImage } from '../../harness/guest/image.js';
import { guestCmdline, guestDescription, prepareRootMountPoints } from '../../harness/guest/boot.js';
import { AARCH64_PLATFORM } from '../../harness/guest/platform.js';
import { arm64L1Description } from '../../harness/lab/platforms/arm64.js';
import { skipBecause } from '../../harness/report/skip.js';
import { repoRoot } from '../../harness/util/paths.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** A fake cache and a fake repo, laid out as the build scripts leave them. */
function layout(): { cache: string; repo: string; cleanup(): void } {
  const root = mkdtempSync(join(tmpdir(), 'guest-image-'));
  const cache = join(root, 'cache');
  const repo = join(root, 'repo');
  mkdirSync(join(repo, 'images', 'kernel'), { recursive: true });
  mkdirSync(join(repo, 'images', 'init', 'harness'), { recursive: true });
  mkdirSync(join(repo, 'scripts'), { recursive: true });
  writeFileSync(join(repo, 'images', 'kernel', 'x86_64.config'), 'CONFIG_IOMMUFD=y\n');
  writeFileSync(join(repo, 'scripts', 'build-kernel.sh'), 'kernel script\n');
  writeFileSync(join(repo, 'scripts', 'build-initramfs.sh'), 'initramfs script\n');
  writeFileSync(join(repo, 'images', 'init', 'init'), '#!/bin/sh\n');
  writeFileSync(join(repo, 'images', 'init', 'harness', 'agent.sh'), 'agent\n');
  const k = join(cache, 'kernel', 'k1');
  const i = join(cache, 'initramfs', 'i1');
  mkdirSync(k, { recursive: true });
  mkdirSync(i, { recursive: true });
  writeFileSync(join(k, 'bzImage'), 'kernel');
  writeFileSync(join(k, 'config'), 'CONFIG_IOMMUFD=y\nCONFIG_NR_CPUS=8\nCONFIG_LOCALVERSION=""\n# CONFIG_MODULES is not set\n');
  writeFileSync(join(i, 'initramfs.cpio.gz'), 'cpio');
  writeFileSync(
    join(cache, 'kernel', 'x86_64.json'),
    JSON.stringify({
      arch: 'x86_64',
      key: 'k1',
      sourcePackage: 'linux-source-7.2',
      sourceVersion: '7.2.13-1',
      kernelRelease: '7.2.13',
      fragmentSha256: sha('CONFIG_IOMMUFD=y\n'),
      scriptSha256: sha('kernel script\n'),
      bzImage: join(k, 'bzImage'),
      config: join(k, 'config'),
      builtAt: '2026-11-26T02:00:00Z',
      buildSeconds: 422,
    }),
  );
  writeFileSync(
    join(cache, 'initramfs', 'x86_64.json'),
    JSON.stringify({
      arch: 'x86_64',
      key: 'i1',
      busyboxVersion: '1:1.35.0-4+deb12u1+b1',
      initramfs: join(i, 'initramfs.cpio.gz'),
      scriptSha256: sha('initramfs script\n'),
      inputs: { init: sha('#!/bin/sh\n'), 'harness/agent.sh': sha('agent\n') },
      builtAt: '2026-11-26T02:00:00Z',
    }),
  );
  return { cache, repo, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

/** The aarch64 images beside the x86 ones: kernel Image, initramfs and the arm64 root (manifests as the scripts write them). */
function addAarch64(l: { cache: string; repo: string }, opts: { root?: boolean } = {}): string {
  writeFileSync(join(l.repo, 'images', 'kernel', 'aarch64.config'), 'CONFIG_ARM_SMMU_V3=y\n');
  writeFileSync(join(l.repo, 'scripts', 'install-arm64-root.sh'), 'root script\n');
  const k = join(l.cache, 'kernel', 'k2');
  const i = join(l.cache, 'initramfs', 'i2');
  const root = join(l.cache, 'roots', 'aarch64-r1');
  mkdirSync(k, { recursive: true });
  mkdirSync(i, { recursive: true });
  mkdirSync(join(root, 'usr', 'bin'), { recursive: true });
  mkdirSync(join(root, 'usr', 'share', 'qemu-efi-aarch64'), { recursive: true });
  writeFileSync(join(k, 'Image'), 'arm64 kernel');
  writeFileSync(join(k, 'config'), 'CONFIG_ARM_SMMU_V3=y\n');
  writeFileSync(join(i, 'initramfs.cpio.gz'), 'cpio');
  writeFileSync(join(root, 'usr', 'bin', 'node'), 'node');
  writeFileSync(join(root, 'usr', 'share', 'qemu-efi-aarch64', 'QEMU_EFI.fd'), 'uefi');
  const kernel = { arch: 'aarch64', key: 'k2', sourcePackage: 'linux-source-7.2', sourceVersion: '7.2.13-1', kernelRelease: '7.2.13' };
  writeFileSync(
    join(l.cache, 'kernel', 'aarch64.json'),
    JSON.stringify({ ...kernel, fragmentSha256: sha('CONFIG_ARM_SMMU_V3=y\n'), scriptSha256: sha('kernel script\n'), image: join(k, 'Image'), config: join(k, 'config'), builtAt: 'x', buildSeconds: 1 }),
  );
  writeFileSync(
    join(l.cache, 'initramfs', 'aarch64.json'),
    JSON.stringify({
      arch: 'aarch64',
      key: 'i2',
      busyboxVersion: '1:1.38.0-3+b1',
      initramfs: join(i, 'initramfs.cpio.gz'),
      scriptSha256: sha('initramfs script\n'),
      inputs: { init: sha('#!/bin/sh\n'), 'harness/agent.sh': sha('agent\n') },
      builtAt: 'x',
    }),
  );
  if (opts.root !== false)
    writeFileSync(
      join(l.cache, 'roots', 'aarch64.json'),
      JSON.stringify({
        machine: 'aarch64',
        key: 'r1',
        root,
        nodeVersion: '24.22.2+dfsg+~cs24.19.2-1',
        qemuVersion: '1:11.1.3+ds-1',
        loader: 'usr/lib/ld-linux-aarch64.so.1',
        libraryPath: 'usr/lib/aarch64-linux-gnu',
        moduleDir: 'usr/lib/aarch64-linux-gnu/qemu',
        firmwareDirs: ['usr/share/qemu'],
        binaries: { node: 'usr/bin/node', aarch64: 'usr/bin/qemu-system-aarch64', busybox: 'usr/bin/busybox' },
        uefi: 'usr/share/qemu-efi-aarch64/QEMU_EFI.fd',
        scriptSha256: sha('root script\n'),
        installedAt: 'x',
        installSeconds: 43,
        packages: 'nodejs 24.22.2+dfsg+~cs24.19.2-1;',
      }),
    );
  return root;
}

describe('guest image lookup', () => {
  let l: ReturnType<typeof layout>;
  beforeEach(() => (l = layout()));
  afterEach(() => l.cleanup());
  const find = () => findGuestImage('x86_64', { cache: l.cache, repo: l.repo });

  it('finds a kernel and initramfs built from the repo as it is', () => {
    const r = find();
    expect(r.ok, r.ok ? '' : r.reason).to.equal(true);
    if (r.ok) expect(r.image).to.deep.include({ kernelRelease: '7.2.13', kernel: join(l.cache, 'kernel', 'k1', 'bzImage') });
  });

  it('says which script to run when nothing is built', () => {
    rmSync(join(l.cache, 'kernel'), { recursive: true });
    const r = find();
    expect(r).to.deep.include({ ok: false });
    if (!r.ok) expect(r.reason).to.match(/^no x86_64 guest kernel built yet \(.*kernel\/x86_64\.json is missing\): run scripts\/build-kernel\.sh$/);
  });

  it('reports a kernel built from another fragment as stale, naming the file', () => {
    writeFileSync(join(l.repo, 'images', 'kernel', 'x86_64.config'), 'CONFIG_IOMMUFD=y\nCONFIG_VFIO=y\n');
    const r = find();
    if (r.ok) expect.fail('a stale kernel was accepted');
    expect(r.reason).to.match(/^stale guest kernel: .*images\/kernel\/x86_64\.config changed since the kernel was built; run scripts\/build-kernel\.sh/);
    expect(findGuestImage('x86_64', { cache: l.cache, repo: l.repo, allowStale: true }).ok).to.equal(true);
  });

  it('reports an initramfs whose init files changed, appeared or went away', () => {
    writeFileSync(join(l.repo, 'images', 'init', 'harness', 'agent.sh'), 'agent v2\n');
    let r = find();
    expect(r.ok ? '' : r.reason).to.match(/images\/init\/harness\/agent\.sh changed since the initramfs was built/);
    writeFileSync(join(l.repo, 'images', 'init', 'harness', 'agent.sh'), 'agent\n');
    writeFileSync(join(l.repo, 'images', 'init', 'extra'), 'x');
    r = find();
    expect(r.ok ? '' : r.reason).to.match(/images\/init\/extra is new/);
    rmSync(join(l.repo, 'images', 'init', 'extra'));
    rmSync(join(l.repo, 'images', 'init', 'harness', 'agent.sh'));
    r = find();
    expect(r.ok ? '' : r.reason).to.match(/images\/init\/harness\/agent\.sh was removed/);
  });

  it('reports a manifest whose image file is gone, and a manifest that is not JSON', () => {
    rmSync(join(l.cache, 'initramfs', 'i1', 'initramfs.cpio.gz'));
    expect(find()).to.deep.include({ ok: false });
    writeFileSync(join(l.cache, 'kernel', 'x86_64.json'), '{');
    const r = find();
    expect(r.ok ? '' : r.reason).to.match(/kernel manifest .* is not valid JSON/);
  });

  it('finds the aarch64 kernel Image, its initramfs and the arm64 root with its UEFI firmware, keyed apart from x86', () => {
    const root = addAarch64(l);
    const r = findGuestImage('aarch64', { cache: l.cache, repo: l.repo });
    if (!r.ok) expect.fail(r.reason);
    expect(r.image).to.deep.include({ arch: 'aarch64', kernel: join(l.cache, 'kernel', 'k2', 'Image'), initrd: join(l.cache, 'initramfs', 'i2', 'initramfs.cpio.gz') });
    expect(r.image.root).to.deep.include({ path: root, uefi: join(root, 'usr', 'share', 'qemu-efi-aarch64', 'QEMU_EFI.fd') });
    const x = find();
    expect(x.ok && x.image.kernel).to.equal(join(l.cache, 'kernel', 'k1', 'bzImage'));
  });

  it('says which script to run for a missing or stale arm64 root, and for a missing aarch64 kernel', () => {
    addAarch64(l, { root: false });
    let r = findGuestImage('aarch64', { cache: l.cache, repo: l.repo });
    expect(r.ok ? '' : r.reason).to.match(/^no aarch64 root file system built yet \(.*roots\/aarch64\.json is missing\): run scripts\/install-arm64-root\.sh$/);
    addAarch64(l);
    writeFileSync(join(l.repo, 'scripts', 'install-arm64-root.sh'), 'root script v2\n');
    r = findGuestImage('aarch64', { cache: l.cache, repo: l.repo });
    expect(r.ok ? '' : r.reason).to.match(/^stale aarch64 root: .*install-arm64-root\.sh changed since the aarch64 root was installed; run scripts\/install-arm64-root\.sh/);
    rmSync(join(l.cache, 'kernel', 'aarch64.json'));
    r = findGuestImage('aarch64', { cache: l.cache, repo: l.repo });
    expect(r.ok ? '' : r.reason).to.match(/run scripts\/build-kernel\.sh --arch aarch64$/);
  });

  it('reads the kernel .config into a map', () => {
    const c = readKernelConfig(join(l.cache, 'kernel', 'k1', 'config'));
    expect(Object.fromEntries(c)).to.deep.equal({ CONFIG_IOMMUFD: 'y', CONFIG_NR_CPUS: '8', CONFIG_LOCALVERSION: '' });
  });
});

describe('guest machine description', () => {
  const image = { kernel: '/k/bzImage', initrd: '/i/initramfs.cpio.gz' } as Parameters<typeof guestDescription>[0]['image'];

  it('puts intel-iommu first, the agent port on virtio-serial, and the serial console', () => {
    const d = guestDescription({ image, devices: [{ driver: 'e1000e', id: 'n0' }] });
    expect(d.devices!.map((x) => x.driver)).to.deep.equal(['intel-iommu', 'virtio-serial-pci', 'virtserialport', 'e1000e']);
    expect(d.devices![2]).to.include({ chardev: 'agent', name: 'org.harness.agent' });
    expect(d).to.deep.include({ serial: true, chardevs: ['agent'], accel: 'tcg', cpu: 'max' });
    expect(d.machine).to.deep.equal({ type: 'q35', props: { 'kernel-irqchip': 'split' } });
    expect(d.extraArgs).to.deep.equal(['-no-reboot']);
  });

  it('shares the host root read-only and results writable over 9p when asked', () => {
    const d = guestDescription({ image, intelIommu: false, rootShare: {}, resultsShare: { hostPath: '/a,b', guestPath: '/mnt/r' } });
    expect(d.devices!.map((x) => x.driver)).to.deep.equal(['virtio-serial-pci', 'virtserialport', 'virtio-9p-pci', 'virtio-9p-pci']);
    expect(d.extraArgs).to.deep.equal([
      '-no-reboot',
      '-fsdev',
      'local,id=hostroot,path=/,security_model=none,multidevs=remap,readonly=on',
      '-fsdev',
      'local,id=results,path=/a,,b,security_model=none,multidevs=remap',
    ]);
    expect(d.kernel!.append).to.include('harness.root=9p harness.roottag=hostroot harness.results=/mnt/r');
  });

  it('refuses a results path the kernel command line cannot carry', () => {
    expect(() => guestCmdline({ resultsShare: { hostPath: '/x', guestPath: '/a b' } })).to.throw(/resultsShare.guestPath must be an absolute path without spaces, got "\/a b"/);
  });
});

describe('aarch64 guest machine description', () => {
  const root = '/cache/roots/aarch64-r1';
  const image = {
    arch: 'aarch64',
    kernel: '/k/Image',
    initrd: '/i/initramfs.cpio.gz',
    root: { path: root, uefi: `${root}/usr/share/qemu-efi-aarch64/QEMU_EFI.fd` },
  } as unknown as GuestImage;

  it('is a virt machine with EL2 and GICv3, UEFI, the SMMUv3 first on the root complex, and the PL011 console with ACPI', () => {
    const d = guestDescription({ image, devices: [{ driver: 'e1000e', id: 'n0' }] });
    expect(d).to.deep.include({ arch: 'aarch64', cpu: 'max,pauth-impdef=on', accel: 'tcg' });
    expect(d.machine).to.deep.equal({ type: 'virt', props: { virtualization: true, 'gic-version': 3 } });
    expect(d.devices![0]).to.deep.equal({ driver: 'arm-smmuv3', id: 'iommu0', 'primary-bus': 'pcie.0', stage: 'nested' });
    expect(d.devices!.map((x) => x.driver)).to.deep.equal(['arm-smmuv3', 'virtio-serial-pci', 'virtserialport', 'e1000e']);
    expect(d.extraArgs).to.deep.equal(['-no-reboot', '-bios', `${root}/usr/share/qemu-efi-aarch64/QEMU_EFI.fd`]);
    expect(d.kernel!.append).to.match(/^console=ttyAMA0 panic=-1 acpi=force harness\.role=agent /);
  });

  it("shares the arm64 root, not the host's /, as the default 9p root", () => {
    const d = guestDescription({ image, rootShare: {} });
    expect(d.extraArgs).to.include(`local,id=hostroot,path=${root},security_model=none,multidevs=remap,readonly=on`);
  });

  it('takes SMMUv3 properties as viommu, and refuses intelIommu on an arm64 guest', () => {
    expect(guestDescription({ image, viommu: { stage: '2' } }).devices![0]).to.deep.include({ driver: 'arm-smmuv3', 'primary-bus': 'pcie.0', stage: '2' });
    expect(guestDescription({ image, viommu: false }).devices!.map((x) => x.driver)).to.not.include('arm-smmuv3');
    expect(() => guestDescription({ image, intelIommu: { 'caching-mode': true } })).to.throw(/intelIommu is an x86_64 option; this aarch64 guest's vIOMMU is arm-smmuv3 \(use viommu\)/);
    expect(AARCH64_PLATFORM.viommu.driver).to.equal('arm-smmuv3');
  });

  it('refuses to boot an aarch64 image without its root', () => {
    expect(() => guestDescription({ image: { ...image, root: undefined } })).to.throw(/the aarch64 image has no root \(image\.root\)/);
  });

  it("as the arm64 lab's L1: the checkout and the cache at their host paths, the e1000e on rp0", () => {
    const d = guestDescription({ image, ...arm64L1Description({ repo: '/work/repo', cache: '/c/cache' }) });
    expect(d.kernel!.append).to.include('harness.root=9p harness.roottag=hostroot harness.share=repo:/work/repo harness.share=cache:/c/cache');
    expect(d.devices!.filter((x) => x.driver === 'e1000e')).to.deep.equal([{ driver: 'e1000e', romfile: '', id: 'lab-e1000e', bus: 'rp0' }]);
    expect(d.memoryMB).to.equal(2048);
  });
});

describe('9p root mount points', () => {
  it('makes the missing share mount points in a root of our own, never in the host /', () => {
    const dir = mkdtempSync(join(tmpdir(), 'guest-root-'));
    try {
      mkdirSync(join(dir, 'mnt'));
      const image = { arch: 'aarch64', kernel: '/k', initrd: '/i', root: { path: dir, uefi: '/u' } } as unknown as GuestImage;
      const made = prepareRootMountPoints({
        image,
        rootShare: {},
        resultsShare: { hostPath: '/r', guestPath: '/mnt' },
        extraShares: [{ tag: 'repo', hostPath: '/x', guestPath: '/work/main' }],
      });
      expect(made).to.deep.equal([join(dir, 'work', 'main')]);
      expect(existsSync(join(dir, 'work', 'main'))).to.equal(true);
      const x86 = { kernel: '/k', initrd: '/i' } as unknown as GuestImage;
      expect(prepareRootMountPoints({ image: x86, rootShare: {}, extraShares: [{ tag: 'r', hostPath: '/x', guestPath: '/no/such/dir' }] })).to.deep.equal([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** The entries of the newc cpio at the start of `buf`, and the offset just past its trailer. */
function newcEntries(buf: Buffer): { names: string[]; end: number } {
  const names: string[] = [];
  let off = 0;
  const pad4 = (n: number): number => (n + 3) & ~3;
  for (;;) {
    const magic = buf.subarray(off, off + 6).toString('latin1');
    if (magic !== '070701') throw new Error(`no newc header at offset ${off} (got ${JSON.stringify(magic)})`);
    const field = (i: number): number => parseInt(buf.subarray(off + 6 + i * 8, off + 14 + i * 8).toString('latin1'), 16);
    const fileSize = field(6);
    const nameSize = field(11);
    const name = buf.subarray(off + 110, off + 110 + nameSize - 1).toString('utf8');
    off = pad4(off + 110 + nameSize);
    off = pad4(off + fileSize);
    if (name === 'TRAILER!!!') return { names, end: off };
    names.push(name);
  }
}

describe('initramfs builder (scripts/build-initramfs.sh)', function () {
  this.timeout(60_000);

  it('puts --early files into an uncompressed cpio before the gzip one, under a key of its own, without replacing ARCH.json', function () {
    const status = spawnSync('dpkg-query', ['-W', '-f', '${Status}', 'busybox-static'], { encoding: 'utf8' });
    if (!status.stdout?.includes('install ok installed')) skipBecause(this, 'busybox-static is not installed (scripts/bootstrap-tools.txt)');
    const root = mkdtempSync(join(tmpdir(), 'initramfs-'));
    try {
      const early = join(root, 'early');
      mkdirSync(join(early, 'kernel', 'firmware', 'acpi'), { recursive: true });
      writeFileSync(join(early, 'kernel', 'firmware', 'acpi', 'IORT.aml'), 'IORT table bytes');
      const env = { ...process.env, HARNESS_CACHE_DIR: join(root, 'cache') };
      const script = join(repoRoot, 'scripts', 'build-initramfs.sh');
      const path = execFileSync('sh', [script, '--early', early, '--print'], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
      const buf = readFileSync(path);
      const { names, end } = newcEntries(buf);
      expect(names).to.include('kernel/firmware/acpi/IORT.aml');
      let gz = end;
      while (buf[gz] === 0) gz++;
      expect([buf[gz], buf[gz + 1]], 'gzip magic after the early cpio and its padding').to.deep.equal([0x1f, 0x8b]);
      expect(existsSync(join(root, 'cache', 'initramfs', 'x86_64.json')), 'an --early build is not the default').to.equal(false);
      const m = JSON.parse(readFileSync(join(dirname(path), 'manifest.json'), 'utf8')) as { early: Record<string, string> };
      expect(m.early).to.deep.equal({ 'kernel/firmware/acpi/IORT.aml': sha('IORT table bytes') });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
