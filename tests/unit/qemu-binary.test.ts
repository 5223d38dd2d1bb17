import { expect } from 'chai';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { findQemu } from '../../harness/qemu/binary.js';

/** An executable file (content irrelevant: discovery never runs it). */
function exe(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, '#!/bin/sh\n');
  chmodSync(path, 0o755);
}

describe('QEMU binary discovery (files only)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'harness-binary-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  // The manifest scripts/install-qemu.sh --release trixie writes (fields as in qemu-trixie/manifest.json).
  const manifest = {
    source: 'Debian trixie (http://deb.debian.org/debian)',
    release: 'trixie',
    debianVersion: '1:10.0.13+ds-0+deb13u1',
    loader: 'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2',
    libraryPath: 'usr/lib/x86_64-linux-gnu',
    moduleDir: 'usr/lib/x86_64-linux-gnu/qemu',
    firmwareDirs: ['usr/share/qemu', 'usr/share/seabios'],
    binaries: { x86_64: 'usr/bin/qemu-system-x86_64', aarch64: 'usr/bin/qemu-system-aarch64' },
  };

  it("runs an install-qemu.sh sysroot named by its bin/ wrapper or its binary through the sysroot's loader, with its trace-events-all", () => {
    const root = join(dir, 'qemu-trixie');
    mkdirSync(root);
    writeFileSync(join(root, 'manifest.json'), JSON.stringify(manifest));
    exe(join(root, 'bin', 'qemu-system-x86_64'));
    exe(join(root, 'usr', 'bin', 'qemu-system-x86_64'));
    mkdirSync(join(root, 'usr', 'share', 'qemu'), { recursive: true });
    writeFileSync(join(root, 'usr', 'share', 'qemu', 'trace-events-all'), '');
    for (const p of [join(root, 'bin', 'qemu-system-x86_64'), join(root, 'usr', 'bin', 'qemu-system-x86_64')]) {
      const b = findQemu('x86_64', { path: p });
      expect(b).to.deep.include({
        path: join(root, 'usr/bin/qemu-system-x86_64'),
        command: join(root, manifest.loader),
        prefixArgs: ['--library-path', join(root, manifest.libraryPath), join(root, 'usr/bin/qemu-system-x86_64')],
        baseArgs: ['-L', join(root, 'usr/share/qemu'), '-L', join(root, 'usr/share/seabios')],
        env: { QEMU_MODULE_DIR: join(root, manifest.moduleDir) },
        source: 'option',
        traceEventsAll: join(root, 'usr/share/qemu/trace-events-all'),
      });
    }
  });

  it('runs a build tree binary as it is, even beside a manifest.json that is not an install-qemu.sh one', () => {
    const build = join(dir, 'qemu', 'build');
    exe(join(build, 'qemu-system-x86_64'));
    writeFileSync(join(build, 'trace-events-all'), '');
    writeFileSync(join(dir, 'qemu', 'manifest.json'), '{"name": "something else"}');
    const b = findQemu('x86_64', { env: { QEMU_X86_64: join(build, 'qemu-system-x86_64') } });
    expect(b).to.deep.include({ command: join(build, 'qemu-system-x86_64'), prefixArgs: [], source: 'environment', traceEventsAll: join(build, 'trace-events-all') });
    writeFileSync(join(dir, 'qemu', 'manifest.json'), 'not json');
    expect(findQemu('x86_64', { path: join(build, 'qemu-system-x86_64') }).command).to.equal(join(build, 'qemu-system-x86_64'));
  });
});
