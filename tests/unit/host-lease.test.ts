/**
 * Device leases (issue 12 part 5): two runs on one machine never take the same
 * device. Two processes contend for devices of one fake host (sysfs on disk,
 * so both see the same kernel state): the second waits, then leaves the
 * device to the first with its PID; gets it once the first gives it back; and
 * reclaims the lease (and the device, from the journal) of a first run that
 * was SIGKILLed.
 */
import { expect } from 'chai';
import { execa, type ResultPromise } from 'execa';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DeviceLeases, leaseAndBind } from '../../harness/host/lease.js';
import { validateProfile, type HostProfile } from '../../harness/host/profile.js';
import { readPciDevice } from '../../harness/host/sysfs.js';
import { VfioBinder } from '../../harness/host/vfio-bind.js';
import { sleep, withDeadline } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';
import type { FakeHost } from '../fixtures/host/fake-sysfs.js';
import { NIC, NIC2, twoNicHost } from '../fixtures/host/two-nics.js';

const profile: HostProfile = validateProfile({ name: 'bench', platform: 'vtd', devices: [NIC, NIC2].map((bdf) => ({ bdf, role: 'no-pasid' })) }, 'bench.yaml');
const url = (p: string) => JSON.stringify(pathToFileURL(join(repoRoot, 'dist', p)).href);

describe('device leases: two runs on one host', function () {
  this.timeout(30_000);
  let root: string;
  let fake: FakeHost;
  let leaseDir: string;
  let journal: string;
  const children: ResultPromise[] = [];

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'host-lease-'));
    ({ fake, leaseDir, journal } = twoNicHost(root));
  });
  afterEach(async () => {
    for (const c of children.splice(0)) {
      c.kill('SIGKILL');
      await c.catch(() => {});
    }
    rmSync(root, { recursive: true, force: true });
  });

  /** Another run: leases and binds `bdfs` on the same fake host, says so, gives them back on "release". */
  async function otherRun(bdfs: string[]): Promise<{ proc: ResultPromise }> {
    const script = join(root, 'other-run.mjs');
    writeFileSync(
      script,
      `import { DeviceLeases, leaseAndBind } from ${url('harness/host/lease.js')};
import { VfioBinder } from ${url('harness/host/vfio-bind.js')};
import { validateProfile } from ${url('harness/host/profile.js')};
import { FakeHost } from ${url('tests/fixtures/host/fake-sysfs.js')};
const [hostRoot, leaseDir, journal, ...bdfs] = process.argv.slice(2);
const fake = new FakeHost(hostRoot);
const profile = validateProfile(${JSON.stringify({ name: 'bench', platform: 'vtd', devices: [NIC, NIC2].map((bdf) => ({ bdf, role: 'no-pasid' })) })}, 'bench.yaml');
const binder = new VfioBinder(profile, { paths: fake.paths, writer: fake.writer, journal });
binder.installSignalHandlers();
const leases = new DeviceLeases(leaseDir);
const r = await leaseAndBind(binder, leases, bdfs, 0);
console.log(JSON.stringify({ bound: r.bound.map((b) => b.bdf) }));
process.stdin.on('data', () => { binder.restoreAll(); leases.releaseAll(); process.exit(0); });
`,
    );
    const c = execa('node', [script, join(root, 'host'), leaseDir, journal, ...bdfs], { stdin: 'pipe', reject: false });
    children.push(c);
    const said = await withDeadline(
      new Promise<string>((resolve) => c.stdout!.once('data', (d: Buffer) => resolve(d.toString()))),
      10_000,
      'the other run to lease and bind',
    );
    expect(JSON.parse(said)).to.deep.equal({ bound: bdfs });
    // Wrapped: an async function returning the subprocess itself would wait for it to exit.
    return { proc: c };
  }

  const binder = () => new VfioBinder(profile, { paths: fake.paths, writer: fake.writer, journal });
  const driver = (bdf: string) => readPciDevice(fake.paths, bdf)?.driver;

  it('a device the other run holds is waited for, then left to it, naming its PID; the rest are bound', async () => {
    const { proc: other } = await otherRun([NIC]);
    expect(driver(NIC)).to.equal('vfio-pci');
    const leases = new DeviceLeases(leaseDir);
    const t0 = Date.now();
    const r = await leaseAndBind(binder(), leases, [NIC, NIC2], 300);
    expect(Date.now() - t0, 'waited the deadline').to.be.at.least(290);
    expect(r.bound.map((b) => b.bdf)).to.deep.equal([NIC2]);
    expect(r.elsewhere.get(NIC)).to.match(new RegExp(`^device ${NIC} is leased by run PID ${other.pid} \\(since .*; waited 300 ms\\)$`));
    expect(leases.leased).to.deep.equal([NIC2]);
    leases.releaseAll();
  });

  it('gets the device once the other run gives it back, within the wait', async () => {
    const { proc: other } = await otherRun([NIC]);
    const leases = new DeviceLeases(leaseDir);
    const b = binder();
    const taking = leaseAndBind(b, leases, [NIC], 10_000);
    await sleep(300);
    other.stdin!.write('release\n');
    const r = await taking;
    expect(r.elsewhere.size).to.equal(0);
    expect(r.bound.map((x) => x.bdf)).to.deep.equal([NIC]);
    expect(JSON.parse(readFileSync(join(leaseDir, `${NIC}.lease`), 'utf8')).pid).to.equal(process.pid);
    b.restoreAll();
    leases.releaseAll();
    expect(driver(NIC)).to.equal('e1000e');
  });

  it('a SIGKILLed run\'s lease is reclaimed at once and its device given back from the journal first', async () => {
    const { proc: other } = await otherRun([NIC]);
    other.kill('SIGKILL');
    await other;
    const leases = new DeviceLeases(leaseDir);
    const b = binder();
    const r = await leaseAndBind(b, leases, [NIC], 0);
    expect(r.elsewhere.size).to.equal(0);
    expect(r.bound.map((x) => x.bdf)).to.deep.equal([NIC]);
    b.restoreAll();
    leases.releaseAll();
    expect(driver(NIC)).to.equal('e1000e');
  });

  it('a lease whose pid lives on in another process (a reused pid) is reclaimed; this process\'s own live lease is not', async () => {
    mkdirSync(leaseDir, { recursive: true });
    // The parent's pid, with a start time it never had: another process that once had this pid.
    writeFileSync(join(leaseDir, `${NIC}.lease`), JSON.stringify({ pid: process.ppid, start: '1', time: 'then' }));
    const a = new DeviceLeases(leaseDir);
    expect(await a.take(NIC, 0)).to.deep.equal({ ok: true });
    const b = new DeviceLeases(leaseDir);
    const r = await b.take(NIC, 50);
    expect(r.ok).to.equal(false);
    expect(!r.ok && r.reason).to.match(new RegExp(`leased by run PID ${process.pid} `));
    a.releaseAll();
    expect(await b.take(NIC, 0)).to.deep.equal({ ok: true });
    b.releaseAll();
  });
});
