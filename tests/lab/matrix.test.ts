import * as chai from 'chai';
import { expect } from 'chai';
import { guestPciFunctionsWithPasid } from '../../harness/lab/guest-pasid.js';
import { useLabHost, type DirectAnswer } from '../../harness/lab/fixture.js';
import { oracleViommu, spareRootPort, vfioPciDevice, type L2Spec } from '../../harness/lab/l2.js';
import { MATRIX, MATRIX_SUITE, REQUESTS_TEST, rowTitle } from '../../harness/lab/matrix.js';
import { formatHwptFlags, HWPT_ALLOC_FLAGS } from '../../harness/trace/flags.js';
import type { IommufdModel } from '../../harness/trace/model.js';
import { QmpCommandError } from '../../harness/qmp/errors.js';
import { skipBecause } from '../../harness/report/skip.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { expectHwpt, type HwptExpectation } from '../../harness/trace/oracle.js';
import { loadConfig } from '../../harness/viommu/configs.js';

chai.use(iommufdAssertions);

/**
 * The patch series' scenarios as a matrix (kselftest FIXTURE_VARIANT style):
 * each row is a vIOMMU config and the role of the passthrough device, and
 * every row runs the same checks. The oracle computes the flags QEMU must
 * request from the config and the device's own IOMMU_GET_HW_INFO; the kernel's
 * answer to QEMU must equal its answer to the same request made directly,
 * and QEMU must act on it. Nothing here knows which host it runs on: on a
 * VT-d host with nesting the kernel grants NEST_PARENT and the rows expect
 * an attach; in the virtual lab it refuses, and they expect the typed
 * failure. What a host cannot do (another IOMMU platform, no PASID device,
 * no KVM) skips with the exact reason.
 */
describe(MATRIX_SUITE, function () {
  this.timeout(600_000);
  const lab = useLabHost();

  for (const v of MATRIX) {
    describe(rowTitle(v), function () {
      const config = loadConfig(v.config);
      let dev: { bdf: string; cdev: string };
      let oracle: HwptExpectation;
      /** The kernel's answer to the oracle's parent flags, asked directly: what QEMU must get back. */
      let direct: DirectAnswer;

      before(async function () {
        lab.requireConfig(this, config);
        dev = await lab.host.device(this, v.role);
        oracle = expectHwpt(oracleViommu(config), await lab.host.hostCaps(this, dev.cdev));
        direct = await lab.host.kernelAnswer(this, dev.cdev, oracle.parent!.flags);
      });

      const spec = (): L2Spec => ({ config, devices: [{ bdf: dev.bdf, id: 'hostdev0' }] });
      const coldPlug = () => lab.launch(spec());
      const parentRequest = (model: IommufdModel) => model.hwptAllocs.find((h) => h.devId === model.devIdOf(dev.bdf) && h.ptKind === 'ioas');

      it(REQUESTS_TEST, async () => {
        const { model } = await coldPlug();
        expect(model).to.have.requestedPerOracle(oracle, { devId: model.devIdOf(dev.bdf)! });
      });

      it('QEMU acts on the kernel’s answer: attached where the kernel grants the oracle’s flags, a typed failure that frees everything where it refuses', async () => {
        lab.expectActsOnAnswer(await coldPlug(), direct, dev.bdf);
      });

      it('the kernel answers QEMU’s request (kprobe) as it answers the same request made directly', async function () {
        lab.host.requireKernelAnswers(this);
        const { model } = await coldPlug();
        lab.expectKernelAnswered(this, parentRequest(model), direct);
      });

      it('hot-plug and unplug, 3 cycles: each HWPT freed, or each refusal typed with nothing left allocated', async function () {
        if (config.viommu?.driver === 'arm-smmuv3') skipBecause(this, 'arm-smmuv3 accel=on with auto properties needs a cold-plugged vfio device; hot-plug is covered cold-plugged');
        const s: L2Spec = { config, spareRootPorts: 1 };
        const m = await lab.launchL2(s);
        for (let i = 0; i < 3; i++) {
          const add = m.qmp.deviceAdd(vfioPciDevice({ bdf: dev.bdf, id: `hp${i}` }, spareRootPort(s)) as never);
          if (direct.ok) {
            await add;
            await m.qmp.deviceDel(`hp${i}`, 10_000);
          } else {
            const err = await add.catch((e: unknown) => e);
            expect(err).to.be.instanceOf(QmpCommandError);
            expect((err as QmpCommandError).desc).to.include('Failed to allocate hwpt');
          }
        }
        const model = await lab.model(m);
        expect(model.hwptAllocs.filter((h) => h.ptKind !== 'hwpt')).to.have.length(3);
        expect(model).to.have.freedEverything();
      });

      if (config.viommu?.driver === 'intel-iommu' && config.viommu.features.fsts) {
        it('a nested stage-1 HWPT (VTD_S1) appears once the guest programs a first-stage PASID entry; PASID cap synthesized when asked', async function () {
          if (!direct.ok) skipBecause(this, `the kernel refuses the nesting parent ${formatHwptFlags(oracle.parent!.flags)} for ${dev.bdf} (${direct.errno}, asked directly): no nested HWPT can follow`);
          const guest = await lab.bootL2Guest(this, spec(), 512);
          const model = await lab.model(guest.machine);
          const nested = model.hwptAllocs.filter((h) => h.ptKind === 'hwpt');
          expect(nested.length, 'nested HWPT requests').to.be.greaterThan(0);
          expect(nested[0]).to.include({ flags: oracle.nested!.flags, hwptType: oracle.nested!.hwptType, len: oracle.nested!.len });
          const wantsPasidCap = Number(config.viommu!.features.pasidBits ?? 0) > 0 && (oracle.parent!.flags & HWPT_ALLOC_FLAGS.PASID) !== 0;
          const withPasid = await guestPciFunctionsWithPasid(guest.agent);
          if (wantsPasidCap) expect(withPasid.map((f) => f.offset), 'synthesized PASID capability offsets').to.include(0xff8);
          else expect(withPasid, 'no PASID capability without pasid-bits or a PASID-capable device').to.deep.equal([]);
        });
      }
    });
  }
});
