import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findGuestImage, readKernelConfig } from '../../harness/guest/image.js';
import { guestCmdline, guestDescription } from '../../harness/guest/boot.js';

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
