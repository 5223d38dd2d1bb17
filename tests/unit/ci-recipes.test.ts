import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { checklistItems } from '../../harness/host/checklist.js';
import { repoRoot } from '../../harness/util/paths.js';

const ci = (f: string): string => readFileSync(join(repoRoot, 'docs', 'ci', f), 'utf8');

/** Every command line of the README's sh blocks, comments and line continuations dropped. */
function readmeCommands(): Set<string> {
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const out = new Set<string>();
  for (const m of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const line of m[1]!.replace(/\\\n\s*/g, ' ').split('\n')) {
      const cmd = line.replace(/\s+#.*$/, '').trim();
      if (cmd) out.add(cmd);
    }
  }
  return out;
}

/** The lab profile a job names, whichever IOMMU: the README shows the vtd one. */
const asReadme = (cmd: string): string => cmd.replace(/--profile (smmuv3-lab|\$\{\{ matrix\.iommu \}\}-lab)/, '--profile vtd-lab');

function expectReadmeCommand(cmd: string, where: string): void {
  expect([...readmeCommands()], `${where}: ${JSON.stringify(cmd)} is none of the README's commands`).to.include(asReadme(cmd));
}

describe('CI and lab recipes (docs/ci)', () => {
  it("GitLab CI: npm test on kvm, the lab suite on vtd and smmuv3, each command the README's, JUnit and run folders kept", () => {
    type Job = { tags?: string[]; script?: string[]; artifacts?: { when: string; reports: { junit: string }; paths: string[] } };
    const raw = parse(ci('gitlab-ci.yml'), { merge: true }) as Record<string, unknown>;
    const doc = raw as Record<string, Job>;
    expect((raw.variables as Record<string, string>).HARNESS_CACHE_DIR, 'the cache outside the clone, kept on the runner').to.match(/^\/var\/cache\//);
    const jobs = Object.entries(doc).filter(([, j]) => Array.isArray((j as { script?: unknown }).script));
    expect(jobs.map(([n]) => n)).to.have.members(['test', 'lab-vtd', 'lab-smmuv3']);
    expect(doc.test!.script).to.deep.equal(['npm test']);
    expect(doc['lab-vtd']!.tags).to.include('vtd');
    expect(doc['lab-smmuv3']!.tags).to.include('smmuv3');
    for (const [name, job] of jobs) {
      expect(job.tags, name).to.include('kvm');
      for (const cmd of job.script!) expectReadmeCommand(cmd, `gitlab-ci.yml ${name}`);
      expect(job.artifacts?.when, name).to.equal('always');
      expect(job.artifacts?.reports.junit, name).to.equal('artifacts/junit.xml');
      expect(job.artifacts?.paths, name).to.include('artifacts/runs/');
    }
    expect(doc['lab-smmuv3']!.script!.at(-1)).to.equal('npm run harness -- run --profile smmuv3-lab --suite lab');
  });

  it("GitHub Actions: the same jobs on self-hosted runners labelled vtd / smmuv3, each run step the README's, artifacts uploaded always", () => {
    type Step = { run?: string; uses?: string; if?: string; with?: { path?: string } };
    const doc = parse(ci('github-actions.yml')) as {
      env: Record<string, string>;
      jobs: Record<string, { 'runs-on': string[]; strategy?: { matrix: { iommu: string[] } }; steps: Step[] }>;
    };
    expect(doc.env.HARNESS_CACHE_DIR).to.match(/^\/var\/cache\//);
    expect(doc.jobs.lab!.strategy!.matrix.iommu).to.deep.equal(['vtd', 'smmuv3']);
    expect(doc.jobs.lab!['runs-on']).to.include('${{ matrix.iommu }}');
    for (const [name, job] of Object.entries(doc.jobs)) {
      expect(job['runs-on'], name).to.include.members(['self-hosted', 'kvm']);
      const runs = job.steps.filter((s) => s.run).map((s) => s.run!.trim());
      expect(runs.length, name).to.be.greaterThan(0);
      for (const cmd of runs) expectReadmeCommand(cmd, `github-actions.yml ${name}`);
      const upload = job.steps.find((s) => s.uses?.startsWith('actions/upload-artifact@'));
      expect(upload?.if, `${name}: artifacts kept when the tests fail`).to.equal('always()');
      expect(upload?.with?.path, name).to.contain('artifacts/junit.xml').and.contain('artifacts/runs/');
    }
    expect(doc.jobs.test!.steps.map((s) => s.run).filter(Boolean)).to.deep.equal(['npm test']);
    expect(doc.env.HARNESS_REPORTER, 'failures annotated on their line').to.equal('github');
  });

  it("nightly: a systemd timer starting a oneshot service whose command is the README's npm start", () => {
    const units = (text: string): Map<string, Map<string, string[]>> => {
      const out = new Map<string, Map<string, string[]>>();
      let section: Map<string, string[]> | undefined;
      for (const raw of text.split('\n')) {
        const line = raw.trim();
        if (!line || line.startsWith('#')) continue;
        const s = /^\[(\w+)\]$/.exec(line);
        if (s) out.set(s[1]!, (section = new Map()));
        else {
          const kv = /^(\w+)=(.*)$/.exec(line);
          expect(kv && section, `unit line ${JSON.stringify(line)}`).to.be.ok;
          section!.set(kv![1]!, [...(section!.get(kv![1]!) ?? []), kv![2]!]);
        }
      }
      return out;
    };
    const service = units(ci('nightly/viommu-harness-nightly.service'));
    const timer = units(ci('nightly/viommu-harness-nightly.timer'));
    expect(service.get('Service')!.get('Type')).to.deep.equal(['oneshot']);
    const exec = service.get('Service')!.get('ExecStart')!;
    expect(exec).to.have.length(1);
    expectReadmeCommand(exec[0]!.replace(/^\/usr\/bin\/env /, ''), 'nightly service');
    expect(service.get('Service')!.get('LimitMEMLOCK')).to.deep.equal(['infinity']);
    expect(timer.get('Timer')!.get('OnCalendar')!.length).to.equal(1);
    expect(timer.get('Timer')!.get('Persistent')).to.deep.equal(['true']);
    expect(timer.get('Install')!.get('WantedBy')).to.deep.equal(['timers.target']);
  });

  it('docs/ci/lab-machine.md lists every item harness doctor --checklist checks, on both arches', () => {
    const doc = ci('lab-machine.md').replace(/\\\|/g, '|');
    for (const arch of ['x86_64', 'aarch64'] as const)
      for (const i of checklistItems(arch)) expect(doc, `${arch} ${i.id}`).to.contain(`\`${i.want}\``).and.contain(i.fix);
  });
});
