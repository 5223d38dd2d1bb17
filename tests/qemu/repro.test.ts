import { expect } from 'chai';
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

  it('qmp-websocket-chardev: the reference QEMU still greets over its WebSocket chardevs and leaves a command unanswered on some of them (exit 0)', async function () {
    await requireQemu(this, 'x86_64');
    const version = await qemuVersion(findQemu('x86_64'));
    const r = await repro(['qmp-websocket-chardev', '--json']);
    const out = JSON.parse(r.stdout) as { present: boolean; qemu: { path: string; version: string }; cmdline: string; expected: string; seen: string; control: string };
    expect(r.exitCode, `${r.stderr}\n${r.stdout}`).to.equal(0);
    expect(out.present, `QEMU ${version.text} answered QMP over its WebSocket chardev: the defect is fixed there, update facts §10 and tests/qemu/ws-bridge.test.ts`).to.equal(true);
    expect(out.qemu).to.deep.equal({ path: findQemu('x86_64').path, version: version.text });
    expect(out.cmdline).to.include('websocket=on').and.include(monitorArgs((await probeQemu(findQemu('x86_64'))).features, 'mq0', 'qmp', 'wsq0').join(' '));
    expect(out.expected).to.include('{"return": {}, "id": 1}');
    expect(out.seen).to.match(/^greeting \{"QMP": \{"version": \{"qemu": \{"micro": \d+/).and.match(/no answer within 3000 ms on [1-5] of 5 connections/);
    // The control rules out the client: HMP answers on the same kind of chardev.
    expect(out.control).to.include(`${version.major}.${version.minor}.${version.micro}`);
    const text = await repro(['qmp-websocket-chardev']);
    expect(text.exitCode).to.equal(0);
    expect(text.stdout).to.include(`version:   ${version.text}`).and.include('verdict:   STILL PRESENT');
  });
});
