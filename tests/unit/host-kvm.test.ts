import { expect } from 'chai';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostQemuArch, kvmUnavailableReason } from '../../harness/host/kvm.js';
import { skipBecause } from '../../harness/report/skip.js';

describe('KVM availability', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvm-test-'));
  const devKvm = join(dir, 'kvm');
  writeFileSync(devKvm, '');
  const cpuinfo = (flags: string) => {
    const p = join(dir, `cpuinfo-${flags.length}`);
    writeFileSync(p, `processor\t: 0\nflags\t\t: fpu vme ${flags} sse2\n`);
    return p;
  };

  it('needs the guest arch to be the host arch', () => {
    const other = hostQemuArch() === 'x86_64' ? 'aarch64' : 'x86_64';
    expect(kvmUnavailableReason(other, devKvm)).to.match(new RegExp(`KVM for ${other} needs an ${other} host`));
  });

  it('needs a /dev/kvm it can open', () => {
    expect(kvmUnavailableReason(hostQemuArch()!, join(dir, 'missing'))).to.equal(`no usable ${join(dir, 'missing')}`);
  });

  it('on x86 needs vmx or svm (this project’s machines have /dev/kvm without them)', function () {
    if (hostQemuArch() !== 'x86_64') skipBecause(this, 'the vmx/svm rule is x86-only');
    expect(kvmUnavailableReason('x86_64', devKvm, cpuinfo('pni lm'))).to.match(/no vmx\/svm flag/);
    expect(kvmUnavailableReason('x86_64', devKvm, cpuinfo('pni vmx lm'))).to.equal(undefined);
    expect(kvmUnavailableReason('x86_64', devKvm, cpuinfo('svm'))).to.equal(undefined);
  });
});
