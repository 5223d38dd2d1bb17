import { expect } from 'chai';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { releaseQemuRoot, releaseQemuWrapper } from '../../harness/qemu/binary.js';
import { requireQemu, requireReleaseQemu } from '../../harness/testing/prereqs.js';
import { repoRoot } from '../../harness/util/paths.js';

const cli = (args: string[], env: Record<string, string> = {}) =>
  execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), ...args], { reject: false, env: { ...process.env, ...env }, timeout: 120_000 });

describe('harness CLI', function () {
  this.timeout(180_000);

  it('qemu info --json names the binary, its version and this QEMU’s vIOMMU property names', async function () {
    await requireQemu(this, 'x86_64');
    const r = await cli(['qemu', 'info', '--json', '--arch', 'x86_64']);
    expect(r.exitCode, r.stderr).to.equal(0);
    const info = JSON.parse(r.stdout);
    const v = /^QEMU emulator version (\d+)\.(\d+)\.(\d+)/.exec(info.version);
    expect(v, info.version).to.not.equal(null);
    expect(info.versionNumbers).to.deep.equal({ major: Number(v![1]), minor: Number(v![2]), micro: Number(v![3]) });
    // Every feature is listed, an absent one as null (not dropped from the JSON).
    expect(info.viommu['intel-iommu'].features).to.have.all.keys(
      'scalableMode', 'fsts', 'pasidBits', 'cachingMode', 'deviceIotlb', 'awBits', 'intremap', 'eim', 'svm', 'dmaTranslation',
    );
    expect(info.viommu['intel-iommu'].properties[info.viommu['intel-iommu'].features.fsts]).to.have.property('type', 'bool');
    expect(info.accelerators).to.include('tcg');
    expect(info.devices).to.include('intel-iommu');
  });

  it("qemu info --json on trixie's 10.0 (named by its wrapper, as a user would): 10.0's names, its own trace-events-all, what it lacks", async function () {
    const bin = await requireReleaseQemu(this, 'trixie');
    const r = await cli(['qemu', 'info', '--json', '--arch', 'x86_64', '--qemu', releaseQemuWrapper('trixie', 'x86_64')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    const info = JSON.parse(r.stdout);
    expect(info).to.include({ binary: bin.path, source: 'option', traceEventsAll: join(releaseQemuRoot('trixie'), 'usr/share/qemu/trace-events-all') });
    expect(info.versionNumbers).to.include({ major: 10, minor: 0 });
    expect(info.viommu['intel-iommu'].features).to.include({ fsts: 'x-flts', scalableMode: 'x-scalable-mode', pasidBits: 'x-pasid-mode', svm: null });
    // What the TCG suite's skips rest on, as this binary reports it.
    expect(info.devices).to.not.include('vfio-user-pci');
    expect(info.accelerators).to.include('tcg').and.not.include('qtest');
    expect(info.objects).to.not.include('monitor-qmp');
    expect(info.runWith).to.include('chroot').and.not.include('exit-with-parent');
  });

  it('qemu info names a QEMU path that is not QEMU', async () => {
    const r = await cli(['qemu', 'info', '--arch', 'x86_64', '--qemu', '/bin/true']);
    expect(r.exitCode).to.equal(1);
    expect(r.stderr).to.include('/bin/true is not QEMU');
  });

  it('run refuses a --grep that matches nothing as bad usage (128), not "nothing could run"', async () => {
    const r = await cli(['run', '--suite', 'qemu', '--grep', 'no test is named like this 7f3a'], { HARNESS_ARTIFACTS: join(tmpdir(), `harness-cli-test-${process.pid}`) });
    expect(r.exitCode, r.stdout + r.stderr).to.equal(128);
    expect(r.stderr).to.include('--grep "no test is named like this 7f3a" matches none of the');
  });

  it('run stops a bisection (128) on a harness error, naming it', async () => {
    const r = await cli(['run', '--suite', 'nope']);
    expect(r.exitCode).to.equal(128);
    expect(r.stderr).to.include('unknown suite "nope" (known: qemu, guest, virtual-lab, lab)');
    const p = await cli(['run', '--profile', 'no-such-profile']);
    expect(p.exitCode).to.equal(128);
    expect(p.stderr).to.match(/no-such-profile/);
  });

  it('rejects an unknown command with the usage', async () => {
    const r = await cli(['frobnicate']);
    expect(r.exitCode).to.equal(128);
    expect(r.stderr).to.include('unknown command').and.include('usage: harness');
  });
});
