import { expect } from 'chai';
import { predictHwptAlloc } from '../../harness/host/kernel-model.js';
import { useLabHost } from '../../harness/lab/fixture.js';
import { skipBecause } from '../../harness/report/skip.js';

/**
 * The two sources of the kernel's truth the lab suites compare QEMU with:
 * its answers recorded by kprobes (self-checked here), and its answers to
 * requests made directly, which must agree with the kernel model
 * (harness/host/kernel-model.ts) of the host's own IOMMU registers. A host
 * whose kernel answers differently from the model shows up here, named, not
 * as a wrong expectation somewhere else.
 */
describe('kernel: the host kernel’s answers, checked', function () {
  this.timeout(120_000);
  const lab = useLabHost();

  /** The flags asked of every bound device: each bit alone and the combinations QEMU uses. */
  const FLAGS = [0x0, 0x1, 0x2, 0x3, 0x4, 0x8, 0x9, 0xa, 0xb];

  it('kprobes read back the requests a known task makes (self-check), so the kernel-side comparisons can run', function () {
    const k = lab.host.kernelAnswers;
    if (!k.ok && !k.broken) skipBecause(this, k.reason);
    expect(k.ok, k.ok ? '' : k.reason).to.equal(true);
  });

  it('every pass-through device’s direct HWPT_ALLOC answers are what the kernel model predicts from its IOMMU registers', async function () {
    const among = lab.host.passThrough;
    const devices = await lab.host.devices(this, among, among.length, `host profile ${lab.host.profile.name} lists no device to pass through`);
    const unmodelled: string[] = [];
    let compared = 0;
    for (const b of devices) {
      const hw = await lab.host.hwInfo(this, b.cdev);
      const direct = Object.fromEntries((await lab.host.directAnswers(this, b.cdev, FLAGS)).map((a, i) => [`0x${FLAGS[i]!.toString(16)}`, a.ok ? 'ok' : a.errno]));
      const predicted = FLAGS.map((f) => predictHwptAlloc(hw, f));
      if (predicted.some((p) => !p)) {
        unmodelled.push(`${b.bdf} (${hw.outDataTypeName})`);
        continue;
      }
      const model = Object.fromEntries(predicted.map((p, i) => [`0x${FLAGS[i]!.toString(16)}`, p!.ok ? 'ok' : p!.errno]));
      expect(direct, `${b.bdf} (${hw.outDataTypeName}): the kernel's direct answers vs the model (${predicted.map((p) => p!.why).join('; ')})`).to.deep.equal(model);
      compared++;
    }
    if (!compared) skipBecause(this, `no kernel model for the IOMMU of ${unmodelled.join(', ')}`);
  });
});
