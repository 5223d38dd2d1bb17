import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { commandSpecs } from '../../harness/cli/main.js';
import { helpText, type CommandSpec } from '../../harness/cli/options.js';
import { ARCHES } from '../../harness/qemu/binary.js';
import { repoRoot } from '../../harness/util/paths.js';

const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');

/** Variables the harness's sources read: process.env.X, process.env['X'], env.X, and `..._${arch.toUpperCase()}` templates. */
export function envVarsRead(text: string): string[] {
  const names = new Set<string>();
  for (const m of text.matchAll(/\b(?:process\.)?env(?:\.([A-Z][A-Z0-9_]+)|\[['"]([A-Z][A-Z0-9_]+)['"]\])/g)) names.add(m[1] ?? m[2]!);
  for (const m of text.matchAll(/`((?:HARNESS|QEMU)_[A-Z0-9_]*)\$\{arch\.toUpperCase\(\)\}`/g)) for (const a of ARCHES) names.add(`${m[1]}${a.toUpperCase()}`);
  return [...names];
}

describe('README: the command line as it is', () => {
  let specs: CommandSpec[] = [];
  before(async () => {
    specs = (await commandSpecs()).map((c) => c.spec);
  });

  it("has every command's --help verbatim", () => {
    expect(specs.length).to.be.greaterThan(4);
    const stale = specs.filter((spec) => !readme.includes(`\`\`\`text\n${helpText(spec)}\`\`\``));
    expect(stale.map((s) => s.name), `README.md lacks the current --help of these; paste it:\n${stale.map(helpText).join('\n')}`).to.deep.equal([]);
  });

  it('names every environment variable the harness reads, in its Environment table', () => {
    const env = readme.slice(readme.indexOf('## Environment'));
    const files = (readdirSync(join(repoRoot, 'harness'), { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
    const read = new Set(files.flatMap((f) => envVarsRead(readFileSync(join(repoRoot, 'harness', f), 'utf8'))));
    expect(read.size).to.be.greaterThan(5);
    const missing = [...read].filter((v) => !env.includes(`\`${v}\``)).sort();
    expect(missing, 'variables read under harness/ but not in the README table').to.deep.equal([]);
  });

  it('sees the forms the sources use', () => {
    expect(envVarsRead("process.env.HARNESS_X; env['QEMU_Y']; opts.env.NOT; `QEMU_${arch.toUpperCase()}`").sort()).to.deep.equal(['HARNESS_X', 'NOT', 'QEMU_AARCH64', 'QEMU_X86_64', 'QEMU_Y']);
  });
});
