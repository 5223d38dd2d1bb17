import { expect } from 'chai';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  hostProfilesDir,
  loadProfile,
  MAX_PROFILE_BYTES,
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
      ['0000:08:00.0', 'net-down', 'binding-test'],
      ['0000:09:00.0', 'net-up', 'binding-test'],
      ['0000:0a:00.0', 'share', 'binding-test'],
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
      'line 3: platform: "vtx" is not one of vtd, smmuv3',
      'line 4: accel: "fast" is not one of kvm, tcg, auto',
      'line 7: devices[1].bdf: "0000:1:00.0" is not a PCI address (DDDD:BB:DD.F)',
      'line 8: devices[2].bdf: "0000:02:25.0" has device number 0x25 (a PCI device number is 00-1f)',
      'line 9: devices[3].colour: not a profile field (expected one of bdf, role, name, notes)',
      'line 9: devices[3].role: "nopasid" is not one of pasid, no-pasid, behind-bridge, binding-test',
      'line 9: devices[3].bdf: 0000:01:00.0 is already devices[0]',
      'line 10: allowGroupPeers[0]: 0000:01:00.0 is listed in devices already',
      'line 10: allowGroupPeers[1]: "zz" is not a PCI address (DDDD:BB:DD.F)',
    ]);
  });

  it('reports missing fields, wrong types and unknown keys', () => {
    expect(problems('platform: vtd\ndevices: {}\nqemu: {riscv64: /x, x86_64: 3}\nkvm: true\n')).to.deep.equal([
      'line 4: kvm: not a profile field (expected one of name, platform, qemu, accel, devices, allowGroupPeers)',
      'name: undefined is not a non-empty name',
      'line 3: qemu.riscv64: not an architecture (expected x86_64, aarch64)',
      'line 3: qemu.x86_64: 3 is not a path',
      'line 2: devices: {} is not a list (use [] for none)',
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

  describe('bad files get a bounded answer naming the file and line', () => {
    let dir: string;
    before(() => (dir = mkdtempSync(join(tmpdir(), 'host-profile-'))));
    after(() => rmSync(dir, { recursive: true, force: true }));
    const loadError = (name: string, content: string | Buffer): ProfileError => {
      const path = join(dir, name);
      writeFileSync(path, content);
      try {
        loadProfile(path);
      } catch (e) {
        expect(e).to.be.instanceOf(ProfileError);
        return e as ProfileError;
      }
      throw new Error('expected a ProfileError');
    };

    // Before: 50 MB with 1.34 M devices took Node to 4.3 GB and out of memory after 49 s.
    it('refuses a profile over the size limit with its size, before parsing', () => {
      const device = '  - { bdf: "0000:01:00.0", role: no-pasid }\n';
      const big = `name: big\nplatform: vtd\ndevices:\n${device.repeat(Math.ceil((MAX_PROFILE_BYTES + 1) / device.length))}`;
      const t = performance.now();
      const err = loadError('big.yaml', big);
      expect(performance.now() - t, 'ms').to.be.below(200);
      expect(err.message).to.equal(`${join(dir, 'big.yaml')}: the profile is ${Buffer.byteLength(big)} bytes; the limit is ${MAX_PROFILE_BYTES} bytes (refused before parsing)`);
      expect(() => parseProfile(big, 'text')).to.throw(ProfileError, 'text: the profile is');
    });

    it('lists at most 20 problems in the message, all of them in problems', function () {
      this.timeout(20_000);
      const device = '  - { bdf: "0000:01:00.0", role: no-pasid }\n';
      const err = loadError('many.yaml', `name: many\nplatform: vtd\ndevices:\n${device.repeat(4000)}`);
      expect(err.problems).to.have.length(3999);
      expect(err.message.split('\n')).to.have.length(22);
      expect(err.message).to.match(/3999 problems:\n  line 5: devices\[1\]\.bdf: 0000:01:00\.0 is already devices\[0\]\n[^]*\n  \.\.\. and 3979 more$/);
    });

    // Before: "Excessive alias count indicates a resource exhaustion attack", no file, no line.
    it('refuses a billion-laughs alias bomb naming the file and the line of the first alias', () => {
      const laughs = ['name: lol', 'platform: vtd', 'a: &a [x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]', 'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]', 'devices: [*c, *c, *c, *c, *c, *c, *c, *c, *c]', ''].join('\n');
      const err = loadError('lol.yaml', laughs);
      expect(err.message).to.match(new RegExp(`^${join(dir, 'lol.yaml').replace(/[.]/g, '\\.')}: line 4: Excessive alias count`));
      expect(err.message).to.include('a profile needs no aliases');
    });

    // Before: 64 KB of garbage came back whole in the message.
    it('quotes at most a short excerpt of a garbage file', () => {
      const garbage = Buffer.from(Array.from({ length: 64 << 10 }, (_, i) => 0x41 + ((i * 7) % 26)));
      const err = loadError('garbage.yaml', garbage);
      expect(err.message.length, err.message.slice(0, 300)).to.be.below(400);
      expect(err.message).to.match(/got "AHOVCJQ[A-Z]+\.\.\. \(65538 characters\)$/);
      const binary = loadError('binary.yaml', Buffer.from(Array.from({ length: 64 << 10 }, (_, i) => (i * 131) % 256)));
      expect(binary.message.length, binary.message.slice(0, 300)).to.be.below(2000);
    });
  });
});

