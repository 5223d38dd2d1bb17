import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  hostProfilesDir,
  loadProfile,
  normalizeBdf,
  parseProfile,
  ProfileError,
  resolveAccel,
  resolveProfilePath,
  validateProfile,
} from '../../harness/host/profile.js';

/** The messages of the ProfileError that parsing `text` throws. */
function problems(text: string): string[] {
  try {
    parseProfile(text, 'test.yaml', '/labs');
  } catch (e) {
    expect(e).to.be.instanceOf(ProfileError);
    return (e as ProfileError).problems;
  }
  throw new Error('expected a ProfileError');
}

const good = `
name: box
platform: vtd
accel: auto
devices:
  - { bdf: "0000:3b:00.0", role: pasid, name: nic }
  - { bdf: 3c:00.1, role: no-pasid }
`;

describe('host profile', () => {
  it('loads every shipped profile, and the lab examples cover every role a lab owner fills in', () => {
    const files = readdirSync(hostProfilesDir).filter((f) => f.endsWith('.yaml'));
    expect(files).to.include.members(['vtd-lab.yaml', 'smmuv3-lab.yaml', 'virtual-lab.yaml']);
    for (const f of files) expect(loadProfile(join(hostProfilesDir, f)).name).to.equal(f.replace(/\.yaml$/, ''));
    expect(loadProfile('vtd-lab').devices.map((d) => d.role)).to.have.members(['pasid', 'no-pasid', 'behind-bridge']);
    expect(loadProfile('smmuv3-lab').platform).to.equal('smmuv3');
    const lab = loadProfile('virtual-lab');
    expect(lab).to.include({ platform: 'vtd', accel: 'tcg' });
    expect(lab.devices.map((d) => [d.bdf, d.name, d.role])).to.deep.equal([
      ['0000:01:00.0', 'e1000e', 'no-pasid'],
      ['0000:02:00.0', 'igb', 'no-pasid'],
      ['0000:03:00.0', 'edu', 'no-pasid'],
      ['0000:05:00.0', 'pasid-endpoint', 'pasid'],
      ['0000:06:00.0', 'plain-endpoint', 'no-pasid'],
      ['0000:07:00.0', 'pasid-no-tlp-prefix', 'no-pasid'],
    ]);
  });

  it('normalizes short and upper-case BDFs and rejects what is not one', () => {
    expect(normalizeBdf('01:00.0')).to.equal('0000:01:00.0');
    expect(normalizeBdf('0000:3B:00.7')).to.equal('0000:3b:00.7');
    expect(normalizeBdf('0001:00:1f.0')).to.equal('0001:00:1f.0');
    for (const bad of ['0000:1:00.0', '0000:01:00.8', '0000:01:20.0', '01:00', '0000:01:00.0.0', 'eth0', ''])
      expect(normalizeBdf(bad), bad).to.equal(undefined);
    const p = parseProfile(good, 'good.yaml');
    expect(p.devices.map((d) => d.bdf)).to.deep.equal(['0000:3b:00.0', '0000:3c:00.1']);
    expect(p.devices[0]).to.deep.equal({ bdf: '0000:3b:00.0', role: 'pasid', name: 'nic' });
    expect(p.allowGroupPeers).to.deep.equal([]);
  });

  it('names the field path and the bad value in each error, all at once', () => {
    const errs = problems(`
name: box
platform: vtx
accel: fast
devices:
  - { bdf: 0000:01:00.0, role: pasid }
  - { bdf: 0000:1:00.0, role: no-pasid }
  - { bdf: 0000:02:25.0, role: pasid }
  - { bdf: 01:00.0, role: nopasid, colour: red }
allowGroupPeers: [0000:01:00.0, zz]
`);
    expect(errs).to.deep.equal([
      'platform: "vtx" is not one of vtd, smmuv3',
      'accel: "fast" is not one of kvm, tcg, auto',
      'devices[1].bdf: "0000:1:00.0" is not a PCI address (DDDD:BB:DD.F)',
      'devices[2].bdf: "0000:02:25.0" has device number 0x25 (a PCI device number is 00-1f)',
      'devices[3].colour: not a profile field (expected one of bdf, role, name, notes)',
      'devices[3].role: "nopasid" is not one of pasid, no-pasid, behind-bridge',
      'devices[3].bdf: 0000:01:00.0 is already devices[0]',
      'allowGroupPeers[0]: 0000:01:00.0 is listed in devices already',
      'allowGroupPeers[1]: "zz" is not a PCI address (DDDD:BB:DD.F)',
    ]);
  });

  it('reports missing fields, wrong types and unknown keys', () => {
    expect(problems('platform: vtd\ndevices: {}\nqemu: {riscv64: /x, x86_64: 3}\nkvm: true\n')).to.deep.equal([
      'kvm: not a profile field (expected one of name, platform, qemu, accel, devices, allowGroupPeers)',
      'name: undefined is not a non-empty name',
      'qemu.riscv64: not an architecture (expected x86_64, aarch64)',
      'qemu.x86_64: 3 is not a path',
      'devices: {} is not a list (use [] for none)',
    ]);
    expect(problems('- just\n- a list\n')[0]).to.match(/^the profile must be a mapping/);
  });

  it('puts the source and the line of a YAML syntax error in the message', () => {
    let err: ProfileError | undefined;
    try {
      parseProfile('name: a\nplatform: vtd\ndevices:\n  - bdf: "0000:01:00.0\n', 'broken.yaml');
    } catch (e) {
      err = e as ProfileError;
    }
    expect(err).to.be.instanceOf(ProfileError);
    expect(err!.message).to.match(/^broken\.yaml: line \d+, column \d+: /);
    expect(() => parseProfile('name: a\nname: b\nplatform: vtd\ndevices: []\n', 'dup.yaml')).to.throw(ProfileError, /dup\.yaml: .*[Uu]nique|dup\.yaml: .*duplicate/);
  });

  it('resolves QEMU paths against the profile folder and ~', () => {
    const p = parseProfile('name: a\nplatform: vtd\nqemu: {x86_64: build/qemu-system-x86_64, aarch64: ~/q/qemu-system-aarch64}\ndevices: []\n', 'a.yaml', '/labs/hosts');
    expect(p.qemu.x86_64).to.equal('/labs/hosts/build/qemu-system-x86_64');
    expect(p.qemu.aarch64).to.match(/^\/.+\/q\/qemu-system-aarch64$/);
    expect(p.accel).to.equal('auto');
  });

  it('turns accel auto into kvm or tcg by what KVM says, and refuses kvm without it', () => {
    const p = validateProfile({ name: 'a', platform: 'vtd', accel: 'auto', devices: [] }, 'a.yaml');
    expect(resolveAccel(p, undefined)).to.equal('kvm');
    expect(resolveAccel(p, 'no usable /dev/kvm')).to.equal('tcg');
    expect(resolveAccel({ ...p, accel: 'tcg' }, undefined)).to.equal('tcg');
    expect(() => resolveAccel({ ...p, accel: 'kvm' }, 'no usable /dev/kvm')).to.throw(ProfileError, 'accel: "kvm" but KVM is unavailable here: no usable /dev/kvm');
  });

  it('finds shipped profiles by name and others by path', () => {
    expect(resolveProfilePath('virtual-lab')).to.equal(join(hostProfilesDir, 'virtual-lab.yaml'));
    expect(resolveProfilePath('/tmp/x.yaml')).to.equal('/tmp/x.yaml');
    expect(() => loadProfile('/nonexistent/lab.yaml')).to.throw(ProfileError, /^\/nonexistent\/lab\.yaml: cannot read the profile/);
  });
});
