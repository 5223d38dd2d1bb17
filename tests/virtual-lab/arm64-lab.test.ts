import * as chai from 'chai';
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { requireGuestImage } from '../../harness/guest/image.js';
import { hostCapsOf } from '../../harness/trace/oracle.js';
import { parseHwInfoJson } from '../../harness/host/hwinfo.js';
import { parseIort, tableUpgradeLine } from '../../harness/lab/iort.js';
import { formatsFor, iommufdModelOf, oracleViommu } from '../../harness/lab/l2.js';
import { MATRIX_SUITE, REQUESTS_TEST, rowTitle } from '../../harness/lab/matrix.js';
import { ARM64_LAB_PLATFORM, ARM64_ROOT_QEMU, arm64LabImage, type Arm64LabImage } from '../../harness/lab/platforms/arm64.js';
import { l1Bdf } from '../../harness/lab/virtual-lab.js';
import { skipBecause } from '../../harness/report/skip.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { HWPT_ALLOC_FLAGS } from '../../harness/trace/flags.js';
import { expectHwpt } from '../../harness/trace/oracle.js';
import { nativeToolPath } from '../../harness/util/native-tools.js';
import { shellQuote } from '../../harness/util/shell.js';
import { cacheDir, repoRoot } from '../../harness/util/paths.js';
import { loadConfig } from '../../harness/viommu/configs.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { describeL1Lab } from './l1-lab.js';

chai.use(iommufdAssertions);

let prepared: Arm64LabImage | undefined;

/**
 * The arm64 virtual lab: an aarch64 L1 under TCG with EL2 and an emulated
 * SMMUv3 (nesting), booted with the IORT override, runs the lab suites with
 * the smmuv3 host profile; its L2s run under KVM inside L1 with arm-smmuv3
 * accel=on, so the SMMUv3 matrix rows run there.
 */
describeL1Lab({
  title: 'arm64 virtual lab (L1 under TCG with EL2, emulated SMMUv3, L2 under KVM)',
  platform: ARM64_LAB_PLATFORM,
  async image(ctx, machines) {
    await requireQemu(ctx, 'aarch64');
    const plain = requireGuestImage(ctx, 'aarch64');
    prepared = await arm64LabImage((d) => machines.launch(d, { name: 'l1-iort-dump' }), plain, {
      platform: ARM64_LAB_PLATFORM,
      image: plain,
      resultsDir: join(machines.artifactsDir, 'l1'),
    });
    return prepared.image;
  },
  tests(lab) {
    it('boots L1 with the IORT override, KVM and its own QEMU for L2', async () => {
      const g = lab().guest;
      const dmesg = await g.agent.check('dmesg');
      expect(dmesg).to.include(tableUpgradeLine(parseIort(prepared!.override.orig)));
      expect(dmesg).to.match(/kvm \[\d+\]: VHE mode initialized successfully/);
      expect((await g.agent.check(`test -c /dev/kvm && test -x ${ARM64_ROOT_QEMU} && echo ok`)).trim()).to.equal('ok');
    });
  },
  testsAfterRun(lab, run) {
    it("arm-smmuv3-accel in L1's L2 trace: parent exactly the oracle's NEST_PARENT and accepted, the vIOMMU (type 1) on it, abort and bypass HWPTs on the vIOMMU, never PASID or DIRTY_TRACKING", async function () {
      const row = { config: 'arm-smmuv3-accel', role: 'no-pasid' } as const;
      const r = (await run()).results.find((x) => x.title === REQUESTS_TEST && x.suite.includes(`${MATRIX_SUITE} › ${rowTitle(row)}`));
      if (!r) throw new Error(`L1 reported no result for ${rowTitle(row)} › ${REQUESTS_TEST}`);
      if (r.state === 'skipped') skipBecause(this, `skipped in L1: ${r.skipReason ?? '(no reason)'}`);
      const trace = join(r.artifactsDir ?? '(no artifacts)', 'l2', 'trace.log');
      expect(existsSync(trace), `L1's L2 trace ${trace}`).to.equal(true);
      // The oracle from L1's own hw info for the device (it is back on its driver after the run).
      const probe = nativeToolPath('iommufd-probe', 'aarch64');
      const bdf = l1Bdf(0);
      const g = lab().guest;
      const dev = `/sys/bus/pci/devices/${bdf}`;
      // Off whatever driver the run gave it back to (L1's kernel may have none for it), onto vfio-pci.
      await g.agent.check(
        `if [ -e ${dev}/driver ]; then echo ${bdf} > ${dev}/driver/unbind; fi; echo vfio-pci > ${dev}/driver_override && echo ${bdf} > /sys/bus/pci/drivers_probe`,
      );
      const cdev = `/dev/vfio/devices/${(await g.agent.check(`ls /sys/bus/pci/devices/${bdf}/vfio-dev`)).trim()}`;
      const hw = parseHwInfoJson(await g.agent.check(`${shellQuote(probe)} hw-info ${cdev}`));
      if (!hw.ok) expect.fail(hw.reason);
      const oracle = expectHwpt(oracleViommu(loadConfig(row.config)), hostCapsOf(hw.value));
      const root = prepared!.image.root!.path;
      const model = await iommufdModelOf(trace, await formatsFor(join(root, 'usr', 'share', 'qemu', 'trace-events-all')));
      const devId = model.devIdOf(bdf)!;
      expect(model).to.have.smmuAccelSequence(oracle, { devId });
      const mine = model.hwptAllocs.filter((h) => h.devId === devId);
      expect(
        mine
          .filter((h) => h.flags & (HWPT_ALLOC_FLAGS.PASID | HWPT_ALLOC_FLAGS.DIRTY_TRACKING))
          .map((h) => `L${h.record.line} flags=0x${h.flags.toString(16)}`),
        'PASID or DIRTY_TRACKING asked',
      ).to.deep.equal([]);
      const v = model.viommus.find((x) => x.devId === devId)!;
      console.log(
        `      parent: ${mine
          .filter((h) => h.ptKind === 'ioas')
          .map((h) => `flags=0x${h.flags.toString(16)} ${h.outcome}`)
          .join(', ')}; vIOMMU ${v.id} type ${v.type} on HWPT ${v.hwptId}; on the vIOMMU: ${mine.filter((h) => h.ptId === v.id).length} HWPTs`,
      );
    });

    it('harness repro smmuv3-accel-default-nic in L1 (KVM): QEMU still aborts for its default NIC, where -nic none comes up and an explicit e1000e is refused', async () => {
      await run().catch(() => {});
      const g = lab().guest;
      const env = Object.entries({
        ...ARM64_LAB_PLATFORM.l1Env,
        HARNESS_CACHE_DIR: cacheDir(),
        HARNESS_ARTIFACTS: `${ARM64_LAB_PLATFORM.resultsMount}/repro`,
        PATH: '/usr/bin:/bin:/usr/sbin:/sbin',
      })
        .map(([k, v]) => shellQuote(`${k}=${v}`))
        .join(' ');
      const r = await g.agent.run(`cd ${shellQuote(repoRoot)} && env -i ${env} node dist/harness/cli.js repro smmuv3-accel-default-nic --arch aarch64 --json`, {
        timeoutMs: 120_000,
      });
      const out = JSON.parse(r.stdout) as { present: boolean; qemu: { version: string }; steps: string[]; seen: string; control: string };
      console.log(`      ${out.qemu.version}: ${out.steps.join('; ')}`);
      expect(out.steps[1], 'control: -nic none').to.equal('the same with -nic none: alive');
      expect(out.control, 'control: an explicit e1000e')
        .to.include('exit 1, ')
        .and.include('Emulated endpoint devices are not allowed when using arm-smmuv3,accel=on');
      expect(
        out.present,
        `QEMU ${out.qemu.version} no longer aborts for the default NIC (${out.seen}): the defect is fixed there; update facts §12 and this test`,
      ).to.equal(true);
      expect(r.status, r.stderr).to.equal(0);
    });
  },
});
