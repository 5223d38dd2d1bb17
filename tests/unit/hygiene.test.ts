import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../harness/util/paths.js';

interface PackageJson {
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}
const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as PackageJson;

describe('project hygiene', () => {
  it('npm test lints and checks formatting (Biome) before mocha, failing on any finding', () => {
    expect(pkg.scripts.test).to.match(/^biome ci (--\S+ )*--error-on-warnings (--\S+ )*\. && mocha$/);
    expect(pkg.scripts.pretest).to.equal('sh scripts/bootstrap.sh');
    expect(pkg.devDependencies['@biomejs/biome'], 'a pinned Biome: a new release must not fail npm test by itself').to.match(/^\d+\.\d+\.\d+$/);
    expect(readFileSync(join(repoRoot, '.ci', 'run'), 'utf8')).to.match(/\nexec npm test\n$/);
  });

  it('mocha is a runtime dependency: harness run imports it', () => {
    expect(readFileSync(join(repoRoot, 'harness', 'cli', 'run.ts'), 'utf8')).to.match(/^import Mocha from 'mocha';$/m);
    expect(pkg.dependencies).to.have.property('mocha');
    expect(pkg.devDependencies).not.to.have.property('mocha');
  });

  it('every lint rule turned off says why, on the line above it', () => {
    const lines = readFileSync(join(repoRoot, 'biome.jsonc'), 'utf8').split('\n');
    const offs = lines.map((l, i) => [l, i] as const).filter(([l]) => /"[a-zA-Z]+":\s*"off"/.test(l));
    expect(offs.length).to.be.greaterThan(0);
    for (const [l, i] of offs) expect(lines[i - 1]?.trim() ?? '', `biome.jsonc:${i + 1} ${l.trim()}`).to.match(/^\/\/ \S.{10,}/);
  });
});
