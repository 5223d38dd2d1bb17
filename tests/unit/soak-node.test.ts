import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { needsSoakNodeFlags } from '../../harness/cli/soak-node.js';
import { missingSoakNodeFlags, SOAK_NODE_FLAGS } from '../../harness/lab/soak.js';
import { repoRoot } from '../../harness/util/paths.js';

describe("the soak's Node flags (harness/cli/soak-node.ts)", function () {
  this.timeout(60_000);
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'harness-soak-node-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('a run hands itself to a child with the flags only where the soak runs in it (the lab suite) and they are missing', () => {
    expect(needsSoakNodeFlags({ suites: ['lab'], execArgv: [] })).to.equal(true);
    expect(needsSoakNodeFlags({ suites: ['qemu', 'lab'], execArgv: ['--enable-source-maps'] })).to.equal(true);
    expect(needsSoakNodeFlags({ suites: ['lab'], execArgv: [...SOAK_NODE_FLAGS] }), 'already the child').to.equal(false);
    expect(needsSoakNodeFlags({ suites: ['virtual-lab'], execArgv: [] }), "L0: L1's own run carries the soak").to.equal(false);
    expect(needsSoakNodeFlags({ suites: ['qemu', 'guest'], execArgv: [] }), 'no lab suite, no soak').to.equal(false);
    expect(missingSoakNodeFlags(['--enable-source-maps', SOAK_NODE_FLAGS[0]!])).to.deep.equal(SOAK_NODE_FLAGS.slice(1));
  });

  it('harness run with the lab suite runs its tests under the flags, and exits with their status', async () => {
    const out = join(dir, 'argv.json');
    const spec = join(dir, 'argv.test.mjs');
    writeFileSync(
      spec,
      `import { writeFileSync } from 'node:fs';\ndescribe('argv', () => { it('records execArgv', () => { writeFileSync(${JSON.stringify(out)}, JSON.stringify([...process.execArgv, 'MALLOC_ARENA_MAX=' + process.env.MALLOC_ARENA_MAX])); }); it('fails', () => { throw new Error('on purpose'); }); });\n`,
    );
    const r = await execa(process.execPath, [join(repoRoot, 'dist', 'harness', 'cli.js'), 'run', '--suite', 'lab', '--spec', spec, '--grep', '^argv '], {
      reject: false,
      all: true,
      env: { HARNESS_ARTIFACTS: join(dir, 'artifacts'), HARNESS_JUNIT: join(dir, 'junit.xml') },
    });
    expect(JSON.parse(readFileSync(out, 'utf8')), r.all).to.include.members([...SOAK_NODE_FLAGS, 'MALLOC_ARENA_MAX=1']);
    expect(r.exitCode, r.all).to.equal(1);
  });
});
