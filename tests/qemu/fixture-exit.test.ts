import { expect } from 'chai';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { repoRoot } from '../../harness/util/paths.js';

const dist = (p: string) => JSON.stringify(pathToFileURL(join(repoRoot, 'dist', p)).href);

/**
 * A spec run by a real `harness run`: QEMU behind a shell that, once QEMU has
 * quit, ends the way a QEMU with a defect at exit would (SIGABRT as in an
 * assertion in the final frees, or exit status 3); then a test with a QEMU
 * that quits cleanly, which must still run and pass.
 */
const spec = `
import assert from 'node:assert/strict';
import { findQemu } from ${dist('harness/qemu/binary.js')};
import { useMachines } from ${dist('harness/testing/fixtures.js')};
const real = findQemu('x86_64');
const endingWith = (tail) => ({ ...real, command: '/bin/sh', prefixArgs: ['-c', '"$0" "$@"; echo "qemu: final frees: assertion failed (simulated)" >&2; ' + tail, real.command, ...real.prefixArgs] });
describe('fixture teardown', () => {
  const machines = useMachines();
  const desc = { arch: 'x86_64', machine: { type: 'none' }, paused: true };
  it('aborts at quit', async () => {
    const m = await machines.launch(desc, { binary: endingWith('kill -ABRT $$') });
    assert.equal((await m.qmp.queryStatus()).status, 'prelaunch');
  });
  it('exits 3 at quit', async () => {
    await machines.launch(desc, { binary: endingWith('exit 3') });
  });
  it('quits cleanly', async () => {
    await machines.launch(desc);
  });
});
`;

describe('fixtures judge how each QEMU ended', function () {
  this.timeout(120_000);

  it('a QEMU that aborts or exits non-zero at quit fails its test with the exit status and stderr tail; the next test still runs', async function () {
    await requireQemu(this, 'x86_64');
    const dir = mkdtempSync(join(tmpdir(), 'harness-fixture-exit-'));
    const file = join(dir, 'teardown.test.mjs');
    writeFileSync(file, spec);
    const r = await execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', '--spec', file], {
      reject: false,
      env: { ...process.env, HARNESS_ARTIFACTS: join(dir, 'artifacts'), HARNESS_JUNIT: join(dir, 'junit.xml') },
      timeout: 110_000,
    });
    const out = r.stdout + r.stderr;
    expect(r.exitCode, out).to.equal(1);
    expect(out).to.match(/QEMU none \(pid \d+\) ended at shutdown \(quit, then SIGTERM, then SIGKILL\) with killed by SIGABRT/);
    expect(out).to.match(/QEMU none \(pid \d+\) ended at shutdown .* with exit status 3/);
    expect(out).to.include('qemu: final frees: assertion failed (simulated)');
    expect(out).to.match(/1 passed, 2 failed, 0 skipped/);
  });
});
