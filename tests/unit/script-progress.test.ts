import { expect } from 'chai';
import { execa } from 'execa';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';

// The first 300 lines of a real x86_64 build log of the guest kernel (linux-source 7.2.13, make -j2), cache path renamed.
const BUILD_LOG = join(repoRoot, 'tests', 'fixtures', 'scripts', 'kernel-build.log');

/** Sources scripts/lib/common.sh and runs `script` with progress lines every second. */
function sh(script: string, dir: string): Promise<{ exitCode?: number; stderr: string }> {
  return execa('sh', ['-c', `. ${join(repoRoot, 'scripts', 'lib', 'common.sh')}\n${script}`], {
    reject: false,
    cwd: dir,
    env: { HARNESS_PROGRESS_SECONDS: '1', HARNESS_CACHE_DIR: join(dir, 'cache') },
    timeout: 30_000,
  });
}

describe('scripts: progress of long steps (run_progress in scripts/lib/common.sh)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'script-progress-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("the kernel build says every interval how long it has run and how many objects it compiled, from make's CC lines", async function () {
    this.timeout(30_000);
    // make's output as it comes: the real log in three bursts, 1.4 s apart.
    const feed = `n=$(wc -l < ${BUILD_LOG}); for i in 1 2 3; do sed -n "$(( (i-1)*n/3+1 )),$(( i*n/3 ))p" ${BUILD_LOG}; sleep 1.4; done`;
    const r = await sh(`run_progress "compiling the x86_64 kernel" build.log '^  (CC|AS)  ' 'objects compiled' sh -c '${feed}'; echo "status $?" >&2`, dir);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('['));
    expect(lines.length, r.stderr).to.be.within(2, 5);
    const counts = lines.map((l) => {
      const m = /^\[sh\] (\d+m\d\ds|\d+s) compiling the x86_64 kernel: (\d+) objects compiled so far; last: (.*)$/.exec(l);
      expect(m, l).to.not.equal(null);
      return Number(m![2]);
    });
    expect(counts).to.deep.equal([...counts].sort((a, b) => a - b));
    expect(counts.at(-1)).to.be.greaterThan(0).and.at.most(159);
    expect(r.stderr).to.match(/status 0\n?$/);
    expect(readFileSync(join(dir, 'build.log'), 'utf8')).to.equal(readFileSync(BUILD_LOG, 'utf8'));
  });

  it("returns the command's status, and prints nothing for a step shorter than the interval", async () => {
    const r = await sh(`run_progress "x" out.log '.' 'lines' sh -c 'echo hi; exit 3'; echo "status $?" >&2`, dir);
    expect(r.stderr.trim()).to.equal('status 3');
  });

  it('formats elapsed time as the heartbeat does', async () => {
    const r = await sh('elapsed_text 9 >&2; elapsed_text 95 >&2; elapsed_text 3600 >&2', dir);
    expect(r.stderr).to.equal('9s\n1m35s\n60m00s');
  });

  it("a command that names its own log: bootstrap watches the kernel build that way, relaying the script's stderr as it comes", async function () {
    this.timeout(30_000);
    // build-kernel.sh's own lines around its make (its text keys the cached kernel, so it cannot print progress itself).
    const script = [
      'echo "[build-kernel.sh] building x86_64 kernel from linux-source-7.2 7.2.13-1 (key 7f78afe5b2ae889d)" >&2',
      `echo "[build-kernel.sh] compiling bzImage with make -j2 (log: $PWD/build.log)" >&2`,
      `n=$(wc -l < ${BUILD_LOG}); for i in 1 2 3; do sed -n "$(( (i-1)*n/3+1 )),$(( i*n/3 ))p" ${BUILD_LOG} >> build.log; sleep 1.4; done`,
      'echo "[build-kernel.sh] built x86_64 7.2.13 in 4s" >&2',
    ].join('\n');
    const r = await sh(
      `cat > fake-build.sh <<'EOF'\n${script}\nEOF\nrun_progress 'building the x86_64 kernel' - '^  (CC|AS)  ' 'objects compiled' sh fake-build.sh; echo "status $?" >&2`,
      dir,
    );
    const lines = r.stderr.split('\n');
    // Progress lines come whenever the interval is up, so they may fall anywhere between the
    // script's own lines; those are relayed whole and in their order.
    const progress = lines.filter((l) => l.startsWith('[sh] '));
    expect(progress.length, r.stderr).to.be.within(2, 5);
    for (const l of progress) expect(l).to.match(/^\[sh\] \d+s building the x86_64 kernel: \d+ objects compiled so far; last: /);
    const own = lines.filter((l) => !l.startsWith('[sh] '));
    expect(own[0]).to.match(/^\[build-kernel\.sh\] building x86_64 kernel/);
    expect(own.at(-2)).to.equal('[build-kernel.sh] built x86_64 7.2.13 in 4s');
    expect(own.at(-1)).to.equal('status 0');
    expect(lines.at(-1)).to.equal('status 0');
  });

  it('bootstrap builds both kernels under run_progress, build-kernel.sh itself unchanged by it', () => {
    const s = readFileSync(join(repoRoot, 'scripts', 'bootstrap.sh'), 'utf8');
    expect(s).to.contain("run_progress 'building the x86_64 kernel' - '^  (CC|AS)  ' 'objects compiled' sh scripts/build-kernel.sh\n");
    expect(s).to.contain("run_progress 'building the aarch64 kernel' - '^  (CC|AS)  ' 'objects compiled' sh scripts/build-kernel.sh --arch aarch64\n");
    expect(readFileSync(join(repoRoot, 'scripts', 'build-kernel.sh'), 'utf8')).to.contain('(log: $buildlog)');
  });
});
