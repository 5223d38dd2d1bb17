import { expect } from 'chai';
import { appendFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { requireGuestImage } from '../../harness/guest/image.js';
import { l2QemuVar } from '../../harness/lab/l2.js';
import { MATRIX, MATRIX_SUITE, REQUESTS_TEST, rowTitle } from '../../harness/lab/matrix.js';
import { VirtualLab, type SuiteRun } from '../../harness/lab/virtual-lab.js';
import { qemuVersion, findQemu } from '../../harness/qemu/binary.js';
import type { TestResult } from '../../harness/report/junit.js';
import { skipBecause } from '../../harness/report/skip.js';
import { useSuiteMachines } from '../../harness/testing/fixtures.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { cacheDir } from '../../harness/util/paths.js';
import { loadConfig } from '../../harness/viommu/configs.js';

/**
 * The measure that the harness catches a QEMU without the series: the
 * virtual lab's matrix with Debian trixie's QEMU 10.0 as L2 (installed by
 * scripts/install-qemu.sh beside the reference). 10.0 has no VT-d nesting for
 * passthrough, so under fsts=on it asks the kernel for a plain HWPT where
 * the series asks for a nesting parent. Every fsts=on row's request test must
 * then FAIL, naming what QEMU asked and what the oracle requires; the fsts=off
 * and no-vIOMMU rows must pass. L1 stays the reference QEMU: it serves the
 * synthetic PASID endpoints through vfio-user-pci, which 10.0 lacks.
 */
const OLDER_QEMU = join(cacheDir(), 'qemu-trixie', 'bin', 'qemu-system-x86_64');

describe('virtual lab: an older QEMU as L2 is caught (matrix with trixie’s QEMU 10.0 inside L1)', function () {
  this.timeout(30 * 60_000);
  const machines = useSuiteMachines();
  let lab: VirtualLab | undefined;
  let run: SuiteRun;
  let version: string;

  before(async function () {
    await requireQemu(this, 'x86_64');
    const image = requireGuestImage(this);
    if (!existsSync(OLDER_QEMU)) skipBecause(this, `no older QEMU at ${OLDER_QEMU} (scripts/install-qemu.sh installs trixie's beside the reference)`);
    version = (await qemuVersion(findQemu('x86_64', { path: OLDER_QEMU }))).text;
    const vfioUserLog = join(machines.artifactsDir, 'vfio-user.log');
    lab = await VirtualLab.start((d) => machines.launch(d, { name: 'l1' }), {
      image,
      resultsDir: join(machines.artifactsDir, 'l1'),
      log: (l) => appendFileSync(vfioUserLog, `${l}\n`),
    });
    run = await lab.runSuites(['lab'], { grep: MATRIX_SUITE, env: { [l2QemuVar('x86_64')]: OLDER_QEMU } });
  });

  after(async function () {
    this.timeout(60_000);
    await lab?.stop();
  });

  const resultsOf = (row: (typeof MATRIX)[number]): TestResult[] => run.results.filter((r) => r.suite === `${MATRIX_SUITE} › ${rowTitle(row)}`);
  const x86Rows = MATRIX.filter((r) => loadConfig(r.config).arch === 'x86_64');
  const fsts = (row: (typeof MATRIX)[number]) => loadConfig(row.config).viommu?.features.fsts === true;

  it('runs the matrix in L1 with the older QEMU as L2', function () {
    expect(version, 'the older QEMU').to.match(/version 10\./);
    for (const row of x86Rows) expect(resultsOf(row).length, `${rowTitle(row)}: results from L1\n${run.output.slice(-2000)}`).to.be.greaterThan(0);
  });

  for (const row of MATRIX.filter((r) => loadConfig(r.config).arch === 'x86_64' && loadConfig(r.config).viommu?.features.fsts === true)) {
    it(`${rowTitle(row)}: “${REQUESTS_TEST}” fails, naming what QEMU asked (0x0), what the oracle requires (NEST_PARENT…) and why`, function () {
      const r = resultsOf(row).find((x) => x.title === REQUESTS_TEST);
      expect(r, `the request test of ${rowTitle(row)}`).to.not.equal(undefined);
      expect(r!.state, `${rowTitle(row)} with ${version}: ${r!.skipReason ?? r!.error ?? ''}`).to.equal('failed');
      // e.g. "requested 0x0 (none), expected 0x9 (NEST_PARENT|PASID): fsts wants a nesting parent, the device has PASID (max_pasid_log2=20)"
      expect(r!.error).to.match(/requested 0x0 \(none\), expected 0x[0-9a-f]+ \(NEST_PARENT[A-Z_|]*\): fsts wants a nesting parent/);
    });
  }

  for (const row of x86Rows.filter((r) => !fsts(r))) {
    it(`${rowTitle(row)}: passes with the older QEMU (no test fails)`, function () {
      const failed = resultsOf(row).filter((x) => x.state === 'failed');
      expect(failed.map((f) => `${f.title}: ${f.error}`), `${rowTitle(row)} with ${version}`).to.deep.equal([]);
      expect(resultsOf(row).some((x) => x.state === 'passed'), `${rowTitle(row)}: at least one test ran and passed`).to.equal(true);
    });
  }
});
