import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lacking, monitorArgs, parseDeviceHelp, type QemuFeatures } from '../../harness/qemu/capabilities.js';
import { repoRoot } from '../../harness/util/paths.js';

/** What probeQemu() read from the real reference (11.1.3) and trixie (10.0.13) binaries. */
function captured(version: string, arch = 'x86_64'): QemuFeatures {
  const j = JSON.parse(readFileSync(join(repoRoot, 'tests', 'fixtures', 'qemu', `probe-${arch}-${version}.json`), 'utf8')) as {
    devices: string[];
    accels: string[];
    objects: string[];
    options: Record<string, string[]>;
  };
  return {
    devices: new Set(j.devices),
    accels: new Set(j.accels),
    objects: new Set(j.objects),
    options: new Map(Object.entries(j.options).map(([o, ps]) => [o, new Set(ps)])),
    commands: new Set(['query-status']),
  };
}

describe('QEMU features from the binary', () => {
  const q11 = captured('11.1.3');
  const q10 = captured('10.0.13');
  const needs = [{ device: 'vfio-user-pci' }, { accel: 'qtest' }, { object: 'monitor-qmp' }, { option: 'run-with', param: 'exit-with-parent' }, { device: 'intel-iommu' }];

  it('11.1.3 has what the TCG suite needs', () => {
    expect(lacking(q11, needs)).to.deep.equal([]);
  });

  it("trixie's 10.0.13 lacks vfio-user-pci, qtest, monitor-qmp and exit-with-parent, each named", () => {
    expect(lacking(q10, needs)).to.deep.equal(['device vfio-user-pci', 'accelerator qtest', '-object type monitor-qmp', '-run-with exit-with-parent']);
    expect(lacking(q10, [{ command: 'query-accelerators' }])).to.deep.equal(['QMP command query-accelerators']);
    expect(lacking(q10, [{ option: 'no-such-option', param: 'x' }])).to.deep.equal(['-no-such-option x']);
  });

  it('devices are what -device takes: 10.0 makes its arm-smmuv3 only with the virt machine, 11.1 takes it as a -device', () => {
    expect(captured('11.1.3', 'aarch64').devices.has('arm-smmuv3')).to.equal(true);
    expect(captured('10.0.13', 'aarch64').devices.has('arm-smmuv3')).to.equal(false);
  });

  it('reads names and aliases from -device help, skipping category headers', () => {
    const names = parseDeviceHelp(readFileSync(join(repoRoot, 'tests', 'fixtures', 'qemu', 'device-help-x86_64-11.1.3-excerpt.txt'), 'utf8'));
    expect([...names].sort()).to.deep.equal(['intel-iommu', 'pcie-root-port', 'vfio-user-pci', 'virtio-iommu', 'virtio-iommu-pci']);
  });

  it('a monitor is -object where the binary has monitor objects, -mon where not', () => {
    expect(monitorArgs(q11, 'mq', 'qmp', 'c0')).to.deep.equal(['-object', 'monitor-qmp,id=mq,chardev=c0']);
    expect(monitorArgs(q10, 'mq', 'qmp', 'c0')).to.deep.equal(['-mon', 'id=mq,chardev=c0,mode=control']);
    expect(monitorArgs(q10, 'mh', 'hmp', 'c1')).to.deep.equal(['-mon', 'id=mh,chardev=c1,mode=readline']);
  });
});
