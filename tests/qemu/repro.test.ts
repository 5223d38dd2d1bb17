import { expect } from 'chai';
import { skipBecause } from '../../harness/report/skip.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { findQemu, qemuVersion } from '../../harness/qemu/binary.js';
import { monitorArgs } from '../../harness/qemu/capabilities.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { probeQemu } from '../../harness/viommu/probe.js';
import { repoRoot } from '../../harness/util/paths.js';

const artifacts = mkdtempSync(join(tmpdir(), 'harness-repro-test-'));
const repro = (args: string[]) =>
  execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), 'repro', ...args], { reject: false, env: { ...process.env, HARNESS_ARTIFACTS: artifacts }, timeout: 60_000 });

describe('harness repro', function () {
  this.timeout(90_000);

  it('--list names every reproducer with what it shows and where it was found', async () => {
    const r = await repro(['--list', '--json']);
    expect(r.exitCode, r.stderr).to.equal(0);
    const list = JSON.parse(r.stdout) as Array<{ name: string; summary: string; found: string }>;
    expect(list.map((x) => x.name)).to.include('qmp-websocket-chardev');
    for (const x of list) expect(x.summary).to.be.a('string').and.not.equal('');
  });

  it('refuses an unknown reproducer (128), naming the known ones', async () => {
    const r = await repro(['no-such-defect']);
    expect(r.exitCode).to.equal(128);
    expect(r.stderr).to.include('no reproducer "no-such-defect" (known: qmp-websocket-chardev');
  });

  it('qmp-websocket-chardev: the reference QEMU greets over its WebSocket chardevs; where a command goes unanswered it says STILL PRESENT (exit 0)', async function () {
    await requireQemu(this, 'x86_64');
    const version = await qemuVersion(findQemu('x86_64'));
    const r = await repro(['qmp-websocket-chardev', '--json']);
    const out = JSON.parse(r.stdout) as { present: boolean; qemu: { path: string; version: string }; cmdline: string; expected: string; seen: string; control: string };
    expect(out.qemu).to.deep.equal({ path: findQemu('x86_64').path, version: version.text });
    expect(out.cmdline).to.include('websocket=on').and.include(monitorArgs((await probeQemu(findQemu('x86_64'))).features, 'mq0', 'qmp', 'wsq0').join(' '));
    expect(out.expected).to.include('{"return": {}, "id": 1}');
    expect(out.seen).to.match(/^greeting \{"QMP": \{"version": \{"qemu": \{"micro": \d+/).and.match(/no answer within 3000 ms on [0-5] of 5 connections/);
    // The control rules out the client: HMP answers on the same kind of chardev.
    expect(out.control).to.include(`${version.major}.${version.minor}.${version.micro}`);
    // The exit status follows the verdict either way (0 present, 1 not), for git bisect run.
    expect(r.exitCode, `${r.stderr}\n${r.stdout}`).to.equal(out.present ? 0 : 1);
    // The defect is a race that load decides: idle, 11.1.3 and 10.0.13 leave all five
    // unanswered; under a loaded CI run both once answered all five. Not seen is a counted skip.
    if (!out.present) skipBecause(this, `QEMU ${version.text} answered on all 5 WebSocket chardevs in this run (${out.seen.slice(-80)}): the race did not show, so this run cannot say it is still there`);
    const text = await repro(['qmp-websocket-chardev']);
    expect(text.stdout).to.include(`version:   ${version.text}`).and.match(/verdict:   (STILL PRESENT|did not reproduce)/);
  });
});
