import { expect } from 'chai';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { commandSpecs } from '../../harness/cli/main.js';
import { requireQemu } from '../../harness/testing/prereqs.js';
import { repoRoot } from '../../harness/util/paths.js';

const tmp = mkdtempSync(join(tmpdir(), 'harness-cli-test-'));
/** The user's QEMU choice is the test's to make: none of L0's reaches the child. */
const { QEMU: _q, QEMU_X86_64: _x, QEMU_AARCH64: _a, HARNESS_L2_QEMU_X86_64: _l, ...baseEnv } = process.env;
const cli = (args: string[], env: Record<string, string> = {}) =>
  execa('node', [join(repoRoot, 'dist', 'harness', 'cli.js'), ...args], {
    reject: false,
    extendEnv: false,
    env: { ...baseEnv, HARNESS_ARTIFACTS: join(tmp, 'artifacts'), HARNESS_JUNIT: join(tmp, 'junit.xml'), ...env },
    timeout: 120_000,
  });

/** A spec file for `harness run --spec`: plain tests, one that needs a QEMU, one that may fail. */
function specFile(name: string, opts: { fail?: boolean } = {}): string {
  const file = join(tmp, `${name}.test.mjs`);
  const prereqs = JSON.stringify(pathToFileURL(join(repoRoot, 'dist', 'harness', 'testing', 'prereqs.js')).href);
  writeFileSync(
    file,
    `import { requireQemu } from ${prereqs};
describe('cli spec ${name}', () => {
  it('passes without QEMU', () => {});
  it('needs a QEMU', async function () { await requireQemu(this, 'x86_64'); });
  it('may fail', () => { ${opts.fail ? "throw new Error('failed on purpose');" : ''} });
});
`,
  );
  return file;
}

/** An executable that exists but is no working QEMU: a build's wrapper whose loader is gone. */
function brokenWrapper(): string {
  const p = join(tmp, 'broken', 'qemu-system-x86_64');
  mkdirSync(join(tmp, 'broken'), { recursive: true });
  writeFileSync(p, '#!/bin/sh\nexec /nonexistent/ld-linux-x86-64.so.2 /nonexistent/qemu-system-x86_64 "$@"\n');
  chmodSync(p, 0o755);
  return p;
}

/** Every command the dispatcher knows, with placeholders for its positional arguments. */
const COMMANDS = (await commandSpecs()).map((c) => ({ words: c.words, args: (c.spec.positionals ?? []).map((p) => p.replace(/\.\.\.$/, '')) }));

describe('harness CLI', function () {
  this.timeout(180_000);

  describe('one parser, one exit policy', () => {
    for (const c of COMMANDS) {
      const name = c.words.join(' ');
      it(`${name}: --help (exit 0); a stray argument and an unknown option are refused naming them (exit 128)`, async () => {
        const h = await cli([...c.words, '--help']);
        expect(h.exitCode, h.stderr).to.equal(0);
        expect(h.stdout).to.match(new RegExp(`^usage: harness ${name}`)).and.include('options:').and.include('exit status');
        // Placeholders for the positionals, then one word too many.
        const stray = await cli([...c.words, ...c.args, 'stray-word']);
        expect(stray.exitCode, stray.stderr).to.equal(128);
        expect(stray.stderr).to.include(`harness ${name}: unexpected argument "stray-word"`);
        const unknown = await cli([...c.words, ...c.args, '--no-such-option']);
        expect(unknown.exitCode, unknown.stderr).to.equal(128);
        expect(unknown.stderr).to.include(`harness ${name}: unknown option --no-such-option`);
      });
    }

    it('the vfio-user server takes the same parser: --help 0, unknown option 128', async () => {
      const server = join(repoRoot, 'dist', 'harness', 'vfio-user', 'cli.js');
      const h = await execa('node', [server, '--help'], { reject: false });
      expect(h.exitCode).to.equal(0);
      expect(h.stdout).to.match(/^usage: vfio-user\/cli\.js/);
      const u = await execa('node', [server, '--sockett', 'x'], { reject: false });
      expect(u.exitCode).to.equal(128);
      expect(u.stderr).to.include('unknown option --sockett');
    });

    it('harness with an unknown command or none: the usage, exit 128', async () => {
      const r = await cli(['frobnicate']);
      expect(r.exitCode).to.equal(128);
      expect(r.stderr).to.include('unknown command "frobnicate"').and.include('usage: harness');
      expect((await cli([])).exitCode).to.equal(128);
      const h = await cli(['--help']);
      expect(h.exitCode).to.equal(0);
      for (const c of COMMANDS) expect(h.stdout).to.include(`  ${c.words.join(' ')} `);
    });
  });

  describe('harness run exit statuses (for git bisect run)', () => {
    it('0 when every test that ran passed', async function () {
      await requireQemu(this, 'x86_64');
      const r = await cli(['run', '--spec', specFile('ok')]);
      expect(r.exitCode, r.stdout + r.stderr).to.equal(0);
      expect(r.stdout).to.include('3 passed, 0 failed, 0 skipped');
    });

    it('1 when a test failed', async function () {
      await requireQemu(this, 'x86_64');
      const r = await cli(['run', '--spec', specFile('fails', { fail: true })]);
      expect(r.exitCode, r.stdout + r.stderr).to.equal(1);
      expect(r.stdout).to.include('2 passed, 1 failed, 0 skipped');
    });

    it('125 when every QEMU-needing test skipped for want of a usable QEMU (never 0)', async () => {
      const r = await cli(['run', '--spec', specFile('no-qemu')], { HARNESS_CACHE_DIR: join(tmp, 'empty-cache') });
      expect(r.exitCode, r.stdout + r.stderr).to.equal(125);
      expect(r.stdout).to.include('2 passed, 0 failed, 1 skipped');
      expect(r.stderr).to.include('1 tests skipped for want of a usable QEMU and no arch has one');
    });

    it('125 before any test when the named QEMU exists but does not run as QEMU, with the reason', async () => {
      for (const [args, env, origin] of [
        [['--qemu-x86_64', brokenWrapper()], {}, '--qemu-x86_64'],
        [[], { QEMU_X86_64: brokenWrapper() }, '$QEMU_X86_64'],
        [['--l2-qemu-x86_64', brokenWrapper()], {}, '--l2-qemu-x86_64'],
      ] as const) {
        const r = await cli(['run', '--spec', specFile('broken'), ...args], env);
        expect(r.exitCode, r.stdout + r.stderr).to.equal(125);
        expect(r.stderr).to.include(`(${origin}) does not run: ${brokenWrapper()} is not QEMU (--version exit 127`).and.include('git bisect run skips it');
        expect(r.stdout, 'no test ran').to.not.include('passed');
      }
    });

    it('128 before any test for a QEMU path that does not exist or is not executable', async () => {
      const plain = join(tmp, 'not-executable');
      writeFileSync(plain, 'not a program\n');
      for (const [args, env, says] of [
        [['--qemu-x86_64', '/nonexistent/qemu-system-x86_64'], {}, '--qemu-x86_64 names /nonexistent/qemu-system-x86_64, which does not exist'],
        [['--qemu-x86_64', plain], {}, `--qemu-x86_64 names ${plain}, which is not an executable file`],
        [[], { QEMU_X86_64: '/nonexistent/qemu-system-x86_64' }, '$QEMU_X86_64 names /nonexistent/qemu-system-x86_64, which does not exist'],
        [['--l2-qemu-x86_64', '/nonexistent/l2-qemu'], {}, '--l2-qemu-x86_64 names /nonexistent/l2-qemu, which does not exist'],
        [[], { HARNESS_L2_QEMU_X86_64: plain }, `$HARNESS_L2_QEMU_X86_64 names ${plain}, which is not an executable file`],
      ] as const) {
        const r = await cli(['run', '--spec', specFile('bad-path'), ...args], env);
        expect(r.exitCode, r.stdout + r.stderr).to.equal(128);
        expect(r.stderr).to.include(says);
        expect(r.stdout, 'no test ran').to.not.include('passed');
      }
    });

    it('1 when a hook fails; the tests it kept from running are failures saying so (results cannot vanish)', async () => {
      const file = join(tmp, 'hook.test.mjs');
      writeFileSync(
        file,
        `describe('setup', () => {
  before(() => { throw new Error('setup broke'); });
  it('first', () => {});
  describe('inner', () => { it('second', () => {}); });
});
describe('other', () => { it('third', () => {}); });
`,
      );
      const dir = join(tmp, 'hook-artifacts');
      const r = await cli(['run', '--spec', file], { HARNESS_ARTIFACTS: dir });
      expect(r.exitCode, r.stdout + r.stderr).to.equal(1);
      const results = JSON.parse(readFileSync(join(dir, 'latest', 'results.json'), 'utf8')) as Array<{ suite: string; title: string; state: string; error?: string }>;
      expect(results.map((x) => [x.suite, x.title, x.state, x.error?.split('\n')[0]])).to.deep.equal([
        ['setup', '"before all" hook for "first"', 'failed', 'Error: setup broke'],
        ['other', 'third', 'passed', undefined],
        ['setup', 'first', 'failed', 'never ran: "before all" hook for "first" failed in "setup"'],
        ['setup › inner', 'second', 'failed', 'never ran: "before all" hook for "first" failed in "setup"'],
      ]);
      expect(r.stdout).to.include('1 passed, 3 failed, 0 skipped');
    });

    it('128 for a test file that does not load (the harness is broken, not QEMU)', async () => {
      const bad = join(tmp, 'broken.test.mjs');
      writeFileSync(bad, "describe('x', () => { it('y', () => {}) });\nimport { nothing } from 'node:fs';\n");
      const r = await cli(['run', '--spec', bad]);
      expect(r.exitCode, r.stdout + r.stderr).to.equal(128);
      expect(r.stderr).to.include('harness run: a test file does not load').and.include("does not provide an export named 'nothing'");
    });

    it('128 for a --grep that matches nothing, an unknown suite or profile', async () => {
      const g = await cli(['run', '--suite', 'qemu', '--grep', 'no test is named like this 7f3a']);
      expect(g.exitCode, g.stdout + g.stderr).to.equal(128);
      expect(g.stderr).to.include('--grep "no test is named like this 7f3a" matches none of the');
      const s = await cli(['run', '--suite', 'nope']);
      expect(s.exitCode).to.equal(128);
      expect(s.stderr).to.include('unknown suite "nope" (known: qemu, guest, virtual-lab, lab)');
      const p = await cli(['run', '--profile', 'no-such-profile']);
      expect(p.exitCode).to.equal(128);
      expect(p.stderr).to.match(/no-such-profile/);
    });
  });

  describe('harness run selection: --list, --grep into L1, --repeat, --failed', () => {
    it("--list prints what a run would execute, L1's lab tests under the virtual-lab suite", async () => {
      const all = await cli(['run', '--list', '--json', '--suite', 'virtual-lab', '--suite', 'lab']);
      expect(all.exitCode, all.stderr).to.equal(0);
      const tests = JSON.parse(all.stdout) as Array<{ file: string; path: string[]; title: string }>;
      const lab = tests.filter((t) => t.file.includes('/dist/tests/lab/'));
      const l1 = tests.filter((t) => t.path[0]?.startsWith('virtual lab (L1') && t.title.startsWith('L1 › '));
      expect(lab.length).to.be.greaterThan(10);
      // Every lab test appears once more as an L1 test of the virtual lab.
      expect(l1.map((t) => t.title).sort()).to.deep.equal(lab.map((t) => `L1 › ${[...t.path, t.title].join(' › ')}`).sort());
    });

    it('--grep that matches only L1 tests selects them (and the virtual lab that runs them); --repeat lists each N times', async () => {
      const all = JSON.parse((await cli(['run', '--list', '--json', '--suite', 'lab'])).stdout) as Array<{ title: string }>;
      const one = all[0]!.title;
      const esc = one.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      const r = await cli(['run', '--list', '--suite', 'virtual-lab', '--grep', `L1 › .*${esc}$`, '--repeat', '2']);
      expect(r.exitCode, r.stderr).to.equal(0);
      const lines = r.stdout.trim().split('\n');
      // Each virtual lab (the VT-d one, the arm64 one) runs the lab suites in its L1: the test once
      // per lab, each listed twice.
      const tests = lines.slice(0, -1);
      const firsts = tests.filter((_, i) => i % 2 === 0);
      expect(firsts.length, r.stdout).to.be.greaterThan(0);
      expect(lines.at(-1)).to.equal(`${tests.length} tests`);
      expect(firsts.some((l) => /^virtual lab \(L1 under TCG, emulated VT-d\) › L1 › /.test(l)), 'the VT-d lab among them').to.equal(true);
      for (const [i, l] of firsts.entries()) {
        expect(l, 'an L1 test of a virtual lab').to.match(/^[^›]*virtual lab[^›]* › L1 › /).and.satisfy((x: string) => x.endsWith(one));
        expect(tests[2 * i + 1]).to.equal(`${l} (repeat 2/2)`);
      }
    });

    it("--failed reruns the failures of the last run, from its results.json", async function () {
      await requireQemu(this, 'x86_64');
      const dir = join(tmp, 'failed-artifacts');
      const file = specFile('rerun', { fail: true });
      expect((await cli(['run', '--spec', file], { HARNESS_ARTIFACTS: dir })).exitCode).to.equal(1);
      const r = await cli(['run', '--spec', file, '--failed', '--list'], { HARNESS_ARTIFACTS: dir });
      expect(r.exitCode, r.stderr).to.equal(0);
      expect(r.stdout).to.equal('cli spec rerun › may fail\n1 tests');
      const none = await cli(['run', '--spec', specFile('clean'), '--failed'], { HARNESS_ARTIFACTS: join(tmp, 'never-ran') });
      expect(none.exitCode).to.equal(128);
      expect(none.stderr).to.include("--failed: cannot read the last run's results");
    });
  });

  it('qemu info --json names the binary, its version and this QEMU’s vIOMMU property names', async function () {
    await requireQemu(this, 'x86_64');
    const r = await cli(['qemu', 'info', '--json', '--arch', 'x86_64']);
    expect(r.exitCode, r.stderr).to.equal(0);
    const info = JSON.parse(r.stdout);
    expect(info.version).to.match(/^QEMU emulator version \d+\.\d+\.\d+/);
    expect(info.viommu['intel-iommu'].features).to.have.all.keys(
      'scalableMode', 'fsts', 'pasidBits', 'cachingMode', 'deviceIotlb', 'awBits', 'intremap', 'eim', 'svm', 'dmaTranslation',
    );
    expect(info.viommu['intel-iommu'].properties[info.viommu['intel-iommu'].features.fsts]).to.have.property('type', 'bool');
  });

  it('qemu info names a QEMU path that is not QEMU', async () => {
    const r = await cli(['qemu', 'info', '--arch', 'x86_64', '--qemu', '/bin/true']);
    expect(r.exitCode).to.equal(1);
    expect(r.stderr).to.include('/bin/true is not QEMU');
  });
});
