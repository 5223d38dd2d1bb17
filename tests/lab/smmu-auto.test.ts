import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Console } from '../../harness/guest/console.js';
import { SERIAL_CHARDEV } from '../../harness/guest/boot.js';
import { findGuestImage } from '../../harness/guest/image.js';
import { useLabHost } from '../../harness/lab/fixture.js';
import { bootL2Kernel, waitForModel } from '../../harness/lab/l2-kernel.js';
import { oracleViommu } from '../../harness/lab/l2.js';
import { SMMU_AUTO_NEEDS_COLD_PLUG, SMMU_AUTO_PROPERTIES, smmuAutoProperties } from '../../harness/lab/smmu.js';
import { hostSmmuFields, parseSmmuProbeLines, probeLineView, vsmmuView } from '../../harness/lab/smmu-view.js';
import { LaunchError, type Machine } from '../../harness/qemu/machine.js';
import { skipBecause } from '../../harness/report/skip.js';
import { formatHwptFlags } from '../../harness/trace/flags.js';
import type { IommufdModel } from '../../harness/trace/model.js';
import { expectHwpt } from '../../harness/trace/oracle.js';
import { sleep } from '../../harness/util/deadline.js';
import { loadConfig } from '../../harness/viommu/configs.js';

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * Runs `cmd` in the L2 guest's console shell and returns what it printed
 * before an end marker. Text typed before ash shows its prompt is mangled
 * (UEFI's and ash's terminal queries eat part of it: seen as a bare `grep`
 * left reading the console), so this waits for the prompt, and each attempt
 * starts with Ctrl-C to end whatever an earlier one left running. The
 * marker is written split (`"SMMU-VIEW-""END"`) so the echoed command line
 * never matches it; the command reads nothing from the console (`{ ...; } </dev/null`).
 */
async function consoleRun(m: Machine, con: Console, cmd: string, ms: number): Promise<string> {
  const chardev = m.chardev(SERIAL_CHARDEV);
  const end = Date.now() + ms;
  await con.waitFor('harness-init: shell on the console', ms, { from: 'start' });
  await con.waitFor('/ # ', ms);
  for (;;) {
    chardev.write('\x03');
    await sleep(500);
    const from = con.all.length;
    chardev.write(`{ ${cmd}; } </dev/null; echo SMMU-VIEW-""END\n`);
    const got = await con.waitFor('SMMU-VIEW-END', 10_000, { from: 'cursor' }).catch(() => undefined);
    if (got) return con.all.slice(from, con.all.lastIndexOf('SMMU-VIEW-END'));
    if (m.exit || Date.now() > end) throw new Error(`${m.name}: no answer to ${JSON.stringify(cmd)} on the console within ${ms} ms\n${con.tail(20)}`);
  }
}

/**
 * arm-smmuv3 accel=on resolves its `auto` properties (ats, ril, ssidsize,
 * oas; cmdqv) from the host SMMU's IDRs when the first cold-plugged device
 * comes (smmuv3_accel_auto_finalise) and writes only its own ID registers:
 * no trace event or QOM property shows the values. L2's guest kernel reads
 * those registers when its arm-smmu-v3 driver probes, so its dmesg is where
 * they show. The expectation is vsmmuView (harness/lab/smmu-view.ts) of the
 * config and the host's own IOMMU_GET_HW_INFO idr[] for the device: with
 * `auto` the host's fields, with explicit values the config's.
 *
 * Linux 7.2's probe line is `oas N-bit (features 0x...)`; of the resolved
 * fields it shows OAS, RIL (ARM_SMMU_FEAT_RANGE_INV) and ATS
 * (ARM_SMMU_FEAT_ATS, the guest kernel has CONFIG_PCI_ATS). Unobservable
 * there: SSIDSIZE (smmu->ssid_bits is never printed, and ARM_SMMU_FEAT_SVA,
 * which would depend on it, needs CONFIG_ARM_SMMU_V3_SVA, off in the
 * harness kernel) and cmdqv (a Tegra241 CMDQV is a separate ACPI device; the
 * guest would print its own probe only where QEMU exposed one, and the
 * check would need a Tegra host to mean anything).
 */
describe('arm-smmuv3 accel auto properties resolved from the host SMMU, as L2’s guest kernel sees them', function () {
  this.timeout(600_000);
  const lab = useLabHost();

  for (const name of ['arm-smmuv3-accel', 'arm-smmuv3-accel-explicit'] as const) {
    it(`${name}: the guest’s arm-smmu-v3 probe line shows the OAS, RIL and ATS that QEMU’s rule derives from the config and the host’s IDRs`, async function () {
      const config = loadConfig(name);
      lab.requireConfig(this, config);
      const dev = await lab.host.device(this, 'no-pasid');
      const hw = await lab.host.hwInfo(this, dev.cdev);
      if (!hw.smmuv3) throw new Error(`IOMMU_GET_HW_INFO for ${dev.cdev} is ${hw.outDataTypeName}, not ARM_SMMUV3, on an smmuv3 host profile`);
      const oracle = expectHwpt(oracleViommu(config), await lab.host.hostCaps(this, dev.cdev));
      const direct = await lab.host.kernelAnswer(this, dev.cdev, oracle.parent!.flags);
      if (!direct.ok)
        skipBecause(
          this,
          `the kernel refuses the nesting parent ${formatHwptFlags(oracle.parent!.flags)} for ${dev.bdf} (${direct.errno}, asked directly): no vIOMMU, L2 does not start`,
        );
      const image = findGuestImage('aarch64');
      if (!image.ok) skipBecause(this, image.reason);
      const idr = hw.smmuv3.idr;
      const want = vsmmuView(config, idr);
      if (!want.ok) throw new Error(`${want.reason}: QEMU refuses this host (test it in realize errors, not here)`);
      console.log(
        `      host IDR0 ${hex(idr[0] ?? 0)} IDR1 ${hex(idr[1] ?? 0)} IDR3 ${hex(idr[3] ?? 0)} IDR5 ${hex(idr[5] ?? 0)} (${JSON.stringify(hostSmmuFields(idr))}); vSMMU per QEMU's rule ${JSON.stringify(want.view)}`,
      );

      const t0 = Date.now();
      const m = await bootL2Kernel(lab.machines, { config, devices: [{ bdf: dev.bdf, id: 'hostdev0' }] }, image.image, 256);
      const con = new Console(m.chardev(SERIAL_CHARDEV));
      // The nested HWPT comes once the guest's driver has probed the vSMMU and attached the device (facts §11).
      const probed = (x: IommufdModel) => x.hwptAllocs.some((h) => h.role === 'nested' && h.ok);
      await waitForModel(m, () => lab.kernel(), probed, 'nested HWPT on the vIOMMU', 300_000);
      const probedMs = Date.now() - t0;
      // dev_info is below the console's loglevel=4: ask dmesg.
      const out = await consoleRun(m, con, '$BB dmesg | $BB grep arm-smmu-v3', 120_000);
      // A command sent before the shell read its console may run twice: one line per SMMU device.
      const lines = [...new Map(parseSmmuProbeLines(out).map((l) => [l.device, l])).values()];
      console.log(`      L2 start to probe ${probedMs} ms, dmesg ${Date.now() - t0 - probedMs} ms later:\n${lines.map((l) => `        ${l.line}`).join('\n')}`);
      // The figures, kept with the test's artifacts (L1's console.log does not reach L0).
      writeFileSync(
        join(m.artifactsDir, 'vsmmu-view.json'),
        `${JSON.stringify({ config: name, hostIdr: idr.map(hex), host: hostSmmuFields(idr), want: want.view, seen: lines.map((l) => l.line), probedMs }, null, 2)}\n`,
      );
      expect(lines, `one arm-smmu-v3 probe line in the guest's dmesg:\n${out}`).to.have.length(1);
      const { ssidBits: _unobservable, ...seen } = want.view;
      expect(probeLineView(lines[0]!), `the guest's view (${lines[0]!.line}) against QEMU's rule on host IDRs`).to.deep.equal(seen);
    });
  }
});

/**
 * Which accel properties, left `auto`, make QEMU insist on a cold-plugged
 * device (smmuv3_accel_machine_done exits): the list in harness/lab/smmu.ts,
 * which the matrix's hot-plug test trusts, asked of the QEMU at hand. Each
 * property alone is left auto on the all-explicit config, with nothing plugged.
 */
describe('arm-smmuv3 accel: each property left auto alone, nothing cold-plugged: QEMU exits exactly where harness/lab/smmu.ts says', function () {
  this.timeout(300_000);
  const lab = useLabHost();
  const explicit = loadConfig('arm-smmuv3-accel-explicit');

  for (const prop of ['ats', 'ril', 'ssidsize', 'oas', 'cmdqv']) {
    const forcesAuto = (SMMU_AUTO_PROPERTIES as readonly string[]).includes(prop);
    it(`${prop}=auto: ${forcesAuto ? 'QEMU exits 1 asking for a cold-plugged VFIO device' : 'QEMU comes up with nothing plugged'}`, async function () {
      const { [prop]: _auto, ...features } = explicit.viommu!.features;
      const config = { ...explicit, name: `${explicit.name}+${prop}=auto`, viommu: { ...explicit.viommu!, features } };
      lab.requireConfig(this, config);
      expect(smmuAutoProperties(config), 'the auto properties harness/lab/smmu.ts sees').to.deep.equal(forcesAuto ? [prop] : []);
      const { error, model } = await lab.launch({ config, spareRootPorts: 1 });
      if (forcesAuto) {
        expect(error, `with ${prop} auto and no cold-plugged device QEMU must not come up`).to.be.instanceOf(LaunchError);
        expect(error!.stderr).to.include(SMMU_AUTO_NEEDS_COLD_PLUG);
        expect(error!.exit?.code, 'QEMU exits 1 (smmuv3_accel_machine_done)').to.equal(1);
      } else {
        expect(error?.stderr ?? '', `QEMU with ${prop} auto and nothing plugged`).to.not.include(SMMU_AUTO_NEEDS_COLD_PLUG);
        expect(error, `QEMU with ${prop} auto and nothing plugged comes up (harness/lab/smmu.ts says ${prop} does not force auto mode)`).to.equal(undefined);
      }
      expect(model.hwptAllocs, 'no device, no HWPT').to.have.length(0);
    });
  }
});
