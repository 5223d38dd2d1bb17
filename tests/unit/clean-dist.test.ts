import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';

describe('scripts/clean-dist.sh (bootstrap, after tsc)', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'clean-dist-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));
  const put = (p: string): void => {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), '');
  };

  it('removes compiled files whose source is gone (a deleted test stops running) and keeps the rest', () => {
    for (const p of ['harness/a.ts', 'dist/harness/a.js', 'dist/harness/a.js.map', 'tests/unit/kept.test.ts', 'dist/tests/unit/kept.test.js']) put(p);
    for (const p of ['dist/tests/unit/deleted.test.js', 'dist/tests/unit/deleted.test.js.map', 'dist/harness/gone/old.js']) put(p);
    const out = execFileSync('sh', [join(repoRoot, 'scripts', 'clean-dist.sh'), root], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).to.equal('');
    for (const p of ['dist/harness/a.js', 'dist/harness/a.js.map', 'dist/tests/unit/kept.test.js']) expect(existsSync(join(root, p)), p).to.equal(true);
    for (const p of ['dist/tests/unit/deleted.test.js', 'dist/tests/unit/deleted.test.js.map', 'dist/harness/gone'])
      expect(existsSync(join(root, p)), p).to.equal(false);
  });

  it('is a no-op without dist/', () => {
    execFileSync('sh', [join(repoRoot, 'scripts', 'clean-dist.sh'), root]);
    expect(existsSync(join(root, 'dist'))).to.equal(false);
  });

  it('runs in bootstrap right after the build', async () => {
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(join(repoRoot, 'scripts', 'bootstrap.sh'), 'utf8')).to.match(/npx tsc -p \.\nsh scripts\/clean-dist\.sh\n/);
  });
});
