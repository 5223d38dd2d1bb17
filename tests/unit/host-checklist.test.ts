import { expect } from 'chai';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { PassThrough } from 'node:stream';
import { doctorCommand } from '../../harness/cli/doctor.js';
import { checkHostList, formatChecklist, memlockLimit, type ChecklistResult } from '../../harness/host/checklist.js';
import { hostPathsUnder } from '../../harness/host/sysfs.js';
import { skipBecause } from '../../harness/report/skip.js';

// A Debian 12 kernel's own lines (config-6.1.0-27-amd64), the options the checklist reads.
const DEBIAN_CONFIG = `CONFIG_IOMMUFD=m
CONFIG_VFIO=m
CONFIG_VFIO_DEVICE_CDEV=y
CONFIG_VFIO_PCI=m
CONFIG_INTEL_IOMMU=y
# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set
CONFIG_PCI_PASID=y
CONFIG_KVM=m
CONFIG_KPROBES=y
CONFIG_KPROBE_EVENTS=y
`;
// /proc/self/limits as Linux prints it.
const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
`;

describe('lab-machine checklist (harness doctor --checklist)', () => {
  let root: string;
  const put = (p: string, text: string | Buffer = ''): void => {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), text);
  };
  const byId = (r: ChecklistResult[]): Map<string, ChecklistResult> => new Map(r.map((x) => [x.id, x]));
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'checklist-'));
    put('proc/sys/kernel/osrelease', '6.1.0-27-amd64\n');
    put('proc/self/limits', LIMITS);
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  /** A lab host as it should be: modules loaded, devices present, tracefs there. */
  function goodHost(cmdline = 'BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on'): void {
    put('boot/config-6.1.0-27-amd64', DEBIAN_CONFIG);
    put('proc/cmdline', `${cmdline}\n`);
    for (const m of ['iommufd', 'vfio', 'vfio_pci']) put(`sys/module/${m}/initstate`, 'live\n');
    mkdirSync(join(root, 'sys/module/kvm'), { recursive: true }); // built in: no initstate
    put('dev/iommu');
    put('dev/kvm');
    mkdirSync(join(root, 'dev/vfio'), { recursive: true });
    put('sys/kernel/tracing/kprobe_events');
  }

  it('passes a host that has everything, saying where it saw each item', () => {
    goodHost();
    const r = checkHostList({ paths: hostPathsUnder(root), arch: 'x86_64', uid: 0 });
    expect(r.filter((x) => x.state !== 'ok').map((x) => `${x.id}: ${x.seen}`)).to.deep.equal([]);
    const m = byId(r);
    expect(m.get('CONFIG_IOMMUFD')!.seen).to.equal(`CONFIG_IOMMUFD=m in ${join(root, 'boot/config-6.1.0-27-amd64')}`);
    expect(m.get('module kvm')!.seen).to.match(/^built in/);
    expect(m.get('module vfio_pci')!.seen).to.match(/^loaded/);
    expect(m.get('intel_iommu=on')!.seen).to.equal('intel_iommu=on on the command line');
    expect(formatChecklist(r)).to.match(/\n {2}20 of 20 met\n$/);
  });

  it('names each unmet item with what was seen and the fix; an option that is not set is missing', () => {
    goodHost('BOOT_IMAGE=/vmlinuz root=/dev/sda1');
    put('boot/config-6.1.0-27-amd64', DEBIAN_CONFIG.replace('CONFIG_VFIO_DEVICE_CDEV=y', '# CONFIG_VFIO_DEVICE_CDEV is not set'));
    rmSync(join(root, 'sys/module/vfio_pci'), { recursive: true });
    rmSync(join(root, 'dev/iommu'));
    const r = checkHostList({ paths: hostPathsUnder(root), arch: 'x86_64', uid: 1000 });
    const unmet = r.filter((x) => x.state !== 'ok').map((x) => x.id);
    expect(unmet).to.deep.equal(['CONFIG_VFIO_DEVICE_CDEV', 'intel_iommu=on', 'module vfio_pci', 'root', '/dev/iommu', 'memlock']);
    const m = byId(r);
    expect(m.get('CONFIG_VFIO_DEVICE_CDEV')!.seen).to.match(/^CONFIG_VFIO_DEVICE_CDEV=n in /);
    expect(m.get('memlock')!.seen).to.equal('Max locked memory 8388608 bytes');
    const text = formatChecklist(r);
    expect(text).to.contain('    NO  /dev/iommu readable and writable by the user running the harness\n');
    expect(text).to.contain('          fix: modprobe vfio_pci (and list it in /etc/modules-load.d/viommu-harness.conf)\n');
    expect(text).to.match(/14 of 20 met; not met: CONFIG_VFIO_DEVICE_CDEV, intel_iommu=on, module vfio_pci, root, \/dev\/iommu, memlock\n$/);
  });

  it('reads /proc/config.gz first; without any config every option is unknown, never ok', () => {
    goodHost();
    put('proc/config.gz', gzipSync(DEBIAN_CONFIG.replace('CONFIG_KPROBES=y', '# CONFIG_KPROBES is not set')));
    let m = byId(checkHostList({ paths: hostPathsUnder(root), arch: 'x86_64', uid: 0 }));
    expect(m.get('CONFIG_KPROBES')!.state).to.equal('missing');
    expect(m.get('CONFIG_KPROBES')!.seen).to.equal(`CONFIG_KPROBES=n in ${join(root, 'proc/config.gz')}`);
    rmSync(join(root, 'proc/config.gz'));
    rmSync(join(root, 'boot'), { recursive: true });
    m = byId(checkHostList({ paths: hostPathsUnder(root), arch: 'x86_64', uid: 0 }));
    for (const id of ['CONFIG_IOMMUFD', 'CONFIG_INTEL_IOMMU', 'CONFIG_KPROBES']) expect(m.get(id)!.state, id).to.equal('unknown');
  });

  it('on arm64 asks for the SMMUv3 driver, not VT-d, and no intel_iommu', () => {
    goodHost();
    const ids = checkHostList({ paths: hostPathsUnder(root), arch: 'aarch64', uid: 0 }).map((x) => x.id);
    expect(ids).to.include.members(['CONFIG_ARM_SMMU_V3', 'module arm_smmu_v3']);
    expect(ids).not.to.include.members(['CONFIG_INTEL_IOMMU']);
    expect(ids).not.to.include('intel_iommu=on');
  });

  it('a device node the user cannot write is missing', function () {
    // root passes access(2) whatever the mode, so only another user sees the mode refused.
    if (process.getuid?.() === 0) skipBecause(this, 'runs as root: access(2) grants root every mode, so a 0400 node reads as writable');
    goodHost();
    chmodSync(join(root, 'dev/kvm'), 0o400);
    expect(byId(checkHostList({ paths: hostPathsUnder(root), arch: 'x86_64' })).get('/dev/kvm')!.seen).to.match(/EACCES/);
  });

  it('parses the locked-memory limit, unlimited included', () => {
    expect(memlockLimit(LIMITS)).to.equal(8388608);
    expect(memlockLimit(LIMITS.replace('8388608              8388608', 'unlimited            unlimited'))).to.equal(Infinity);
    expect(memlockLimit('Limit Soft Hard\n')).to.equal(undefined);
  });

  it('harness doctor --checklist prints it (exit 0); --json gives the items; the report ends with the count', async () => {
    goodHost();
    const run = async (args: string[]): Promise<{ status: number; out: string }> => {
      const stdout = new PassThrough();
      let out = '';
      stdout.on('data', (d: Buffer) => (out += d.toString()));
      const status = await doctorCommand(args, { stdout, stderr: new PassThrough() });
      return { status, out };
    };
    const text = await run(['--checklist', '--root', root]);
    expect(text.status).to.equal(0);
    expect(text.out).to.match(/^lab-machine checklist \(docs\/ci\/lab-machine\.md\):\n {2}kernel options:\n/);
    const json = JSON.parse((await run(['--checklist', '--json', '--root', root])).out) as ChecklistResult[];
    expect(json.find((x) => x.id === 'CONFIG_IOMMUFD')!.state).to.equal('ok');
    const report = await run(['--root', root]);
    expect(report.out).to.match(/\nlab-machine checklist: \d+ of \d+ met/);
  });
});
