import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';

/** skipBecause itself (it stores the reason first) and this test, whose strings show the pattern. */
const ALLOWED = new Set(['harness/report/skip.ts', 'tests/unit/no-bare-skip.test.ts']);

/** `.skip()` called on a mocha context (this.skip(), ctx.skip()), not describe.skip / it.skip(title, ...). */
const BARE_SKIP = /\b(?:this|ctx|context)\s*\.\s*skip\s*\(\s*\)/;

function sources(dir: string): string[] {
  return (readdirSync(join(repoRoot, dir), { recursive: true }) as string[]).filter((f) => f.endsWith('.ts')).map((f) => join(dir, f));
}

describe('skips always have a reason', () => {
  it('no bare this.skip() in tests/ or harness/ (skipBecause(ctx, reason) is the way)', () => {
    const found: string[] = [];
    for (const f of [...sources('harness'), ...sources('tests'), ...sources('bench')]) {
      if (ALLOWED.has(f)) continue;
      readFileSync(join(repoRoot, f), 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (BARE_SKIP.test(line.replace(/\/\/.*$/, ''))) found.push(`${relative(repoRoot, join(repoRoot, f))}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(found, `bare skips (the reporter cannot say why):\n${found.join('\n')}`).to.deep.equal([]);
  });

  it('the scan sees a bare skip for what it is', () => {
    expect(BARE_SKIP.test('if (x) this.skip();')).to.equal(true);
    expect(BARE_SKIP.test('ctx . skip ( )')).to.equal(true);
    expect(BARE_SKIP.test("skipBecause(this, 'no KVM')")).to.equal(false);
    expect(BARE_SKIP.test("describe.skip('x', () => {})")).to.equal(false);
  });
});
