/**
 * Lab devices are leased and bound per test that uses them (issue 12 part 5):
 * DeviceLoans on a fake host (sysfs on disk, the real binder), and the lab
 * fixture's lifecycle in a mocha run of its own (tests/fixtures/lab/loans-suite.ts):
 * a test's device goes back to its driver and its lease is released when the
 * test ends, a before hook's when its suite ends, and a device another run
 * holds is waited for, then skipped naming that run's PID.
 */
import { expect } from 'chai';
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DeviceLoans } from '../../harness/host/device-loans.js';
import { DeviceLeases } from '../../harness/host/lease.js';
import { validateProfile } from '../../harness/host/profile.js';
import { readPciDevice } from '../../harness/host/sysfs.js';
import { BindRefused, VfioBinder } from '../../harness/host/vfio-bind.js';
import { repoRoot } from '../../harness/util/paths.js';
import type { FakeHost } from '../fixtures/host/fake-sysfs.js';
import { LOANS_PROFILE, NIC, NIC2, twoNicHost } from '../fixtures/host/two-nics.js';

const profile = validateProfile(LOANS_PROFILE, 'loans.yaml');

describe('lab devices: leased and bound per test', function () {
  this.timeout(30_000);
  let root: string;
  let fake: FakeHost;
  let leaseDir: string;
  let journal: string;

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'lab-loans-'));
    ({ fake, leaseDir, journal } = twoNicHost(root));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const driver = (bdf: string) => readPciDevice(fake.paths, bdf)?.driver;
  const leaseFile = (bdf: string) => join(leaseDir, `${bdf}.lease`);
  const binder = () => new VfioBinder(profile, { paths: fake.paths, writer: fake.writer, journal });

  describe('DeviceLoans', () => {
    it('binds on the first request, reuses the device for another scope, and gives it back (driver, then lease) only when its own scope ends', async () => {
      const loans = new DeviceLoans(binder(), new DeviceLeases(leaseDir), 0);
      const test1 = {};
      const r = await loans.take([NIC], 1, test1);
      expect(r.ok && r.bound.map((b) => b.bdf)).to.deep.equal([NIC]);
      expect(driver(NIC)).to.equal('vfio-pci');
      expect(JSON.parse(readFileSync(leaseFile(NIC), 'utf8')).pid).to.equal(process.pid);
      const r2 = await loans.take([NIC], 1, {});
      expect(r2.ok && r2.bound[0]!.cdev).to.equal(r.ok && r.bound[0]!.cdev);
      expect(loans.scopeOf(NIC)).to.equal(test1);
      expect(loans.giveBack({})).to.deep.equal([]);
      expect(driver(NIC)).to.equal('vfio-pci');
      expect(loans.giveBack(test1).map((x) => [x.bdf, x.ok])).to.deep.equal([[NIC, true]]);
      expect(driver(NIC)).to.equal('e1000e');
      expect(existsSync(leaseFile(NIC)), 'lease released').to.equal(false);
    });

    it('takes the next free device of several when the first is leased elsewhere, without waiting the deadline', async () => {
      const other = new DeviceLeases(leaseDir);
      await other.take(NIC, 0);
      const loans = new DeviceLoans(binder(), new DeviceLeases(leaseDir), 10_000);
      const t0 = Date.now();
      // The same process's other DeviceLeases holds NIC: another instance is another run as far as leases go.
      const r = await loans.take([NIC, NIC2], 1, {});
      expect(Date.now() - t0).to.be.below(2000);
      expect(r.ok && r.bound.map((b) => b.bdf)).to.deep.equal([NIC2]);
      expect(driver(NIC)).to.equal('e1000e');
      loans.giveBackAll();
      other.releaseAll();
    });

    it('more devices asked than listed is refused at once, naming both counts, with nothing leased', async () => {
      const loans = new DeviceLoans(binder(), new DeviceLeases(leaseDir), 10_000);
      const t0 = Date.now();
      const r = await loans.take([NIC, NIC2], 3, {});
      expect(Date.now() - t0, 'no wait for devices that do not exist').to.be.below(1_000);
      expect(r).to.deep.equal({ ok: false, reason: `3 devices asked, the profile lists 2: ${NIC}, ${NIC2}` });
      expect(existsSync(leaseFile(NIC)) || existsSync(leaseFile(NIC2)), 'a lease left').to.equal(false);
    });

    it('a bind refused gives the lease back and throws', async () => {
      const loans = new DeviceLoans(binder(), new DeviceLeases(leaseDir), 0);
      rmSync(join(fake.paths.sys, 'bus', 'pci', 'drivers', 'vfio-pci'), { recursive: true, force: true });
      let thrown: unknown;
      await loans.take([NIC], 1, {}).catch((e: unknown) => (thrown = e));
      expect(thrown).to.be.instanceOf(BindRefused);
      expect(existsSync(leaseFile(NIC)), 'lease released after the refusal').to.equal(false);
    });
  });

  it('the lab fixture: a test’s device given back when it ends, a before hook’s when its suite ends, one leased by another run skipped naming its PID', async () => {
    const log = join(root, 'loans.jsonl');
    // This process is "another run" holding NIC2.
    const other = new DeviceLeases(leaseDir);
    expect(await other.take(NIC2, 0)).to.deep.equal({ ok: true });
    const suite = pathToFileURL(join(repoRoot, 'dist', 'tests', 'fixtures', 'lab', 'loans-suite.js')).href;
    const script = `import Mocha from 'mocha';
const m = new Mocha({ timeout: 20000, reporter: 'dot' });
m.addFile(new URL(${JSON.stringify(suite)}).pathname);
await m.loadFilesAsync();
m.run((failures) => { process.exitCode = failures ? 1 : 0; });`;
    const r = await execa(process.execPath, ['--input-type=module', '-e', script], {
      cwd: repoRoot,
      reject: false,
      timeout: 25_000,
      env: { LOANS_HOST: join(root, 'host'), LOANS_LEASES: leaseDir, LOANS_JOURNAL: journal, LOANS_LOG: log, LOANS_WAIT_MS: '300' },
    });
    other.releaseAll();
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).to.equal(0);
    const steps = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as { at: string; pid: number; bdf?: string; same?: boolean; reason?: string; host: Record<string, { driver: string; lease: number }> },
      );
    const child = steps[0]!.pid;
    const state = (s: (typeof steps)[number]) => [s.host[NIC]!.driver, s.host[NIC]!.lease === 0 ? 'free' : s.host[NIC]!.lease === child ? 'child' : 'other'];
    expect(steps.map((s) => s.at)).to.deep.equal([
      'A: before asking',
      'A: holds',
      'A: ended',
      'B: asks nothing',
      'B: ended',
      'C: ended',
      'row before: holds',
      'row 1: holds',
      'row 1: ended',
      'row 2: asks nothing',
      'row 2: ended',
      'D: asks nothing',
      'D: ended',
      'suite ended',
    ]);
    const at = (name: string) => steps.find((s) => s.at === name)!;
    expect(state(at('A: before asking')), 'nothing bound before a test asks').to.deep.equal(['e1000e', 'free']);
    expect(state(at('A: holds')), 'leased and bound when asked').to.deep.equal(['vfio-pci', 'child']);
    expect(state(at('A: ended')), 'given back when A ended').to.deep.equal(['e1000e', 'free']);
    expect(at('C: ended').reason).to.match(new RegExp(`^device ${NIC2} is leased by run PID ${process.pid} \\(since .*; waited 300 ms\\)$`));
    expect(at('C: ended').host[NIC2], 'the other run’s device untouched').to.deep.equal({ driver: 'igb', lease: process.pid });
    expect(state(at('row before: holds'))).to.deep.equal(['vfio-pci', 'child']);
    expect(at('row 1: holds').same, 'the row’s test gets the device its before hook holds').to.equal(true);
    expect(state(at('row 1: ended')), 'a before hook’s device outlives the test').to.deep.equal(['vfio-pci', 'child']);
    expect(state(at('row 2: ended')), 'held for the whole suite').to.deep.equal(['vfio-pci', 'child']);
    expect(state(at('D: asks nothing')), 'given back when the row ended').to.deep.equal(['e1000e', 'free']);
  });
});
