import { expect } from 'chai';
import { jobsExitStatus, planJobs } from '../../harness/testing/jobs.js';
import type { ListedTest } from '../../harness/testing/test-list.js';

const t = (file: string, title: string): ListedTest => ({ file, path: ['s'], title });

describe('harness run --jobs: the plan and the exit status', () => {
  it('lab-suite files go to one worker (they share the devices); other files spread by test count', () => {
    const tests = [
      t('/r/dist/tests/lab/a.test.js', 'a1'),
      t('/r/dist/tests/lab/b.test.js', 'b1'),
      t('/r/dist/tests/qemu/c.test.js', 'c1'),
      t('/r/dist/tests/qemu/c.test.js', 'c2'),
      t('/r/dist/tests/qemu/c.test.js', 'c3'),
      t('/r/dist/tests/unit/d.test.js', 'd1'),
    ];
    const plan = planJobs(tests, 2);
    expect(plan.workers).to.have.length(2);
    const lab = plan.workers.find((w) => w.files.includes('/r/dist/tests/lab/a.test.js'))!;
    expect(lab.files).to.include('/r/dist/tests/lab/b.test.js');
    expect(plan.workers.flatMap((w) => w.titles).sort()).to.deep.equal(['s a1', 's b1', 's c1', 's c2', 's c3', 's d1']);
    expect(plan.workers.map((w) => w.titles.length).sort()).to.deep.equal([3, 3]);
    // Never more workers than independent units.
    expect(planJobs([t('/r/dist/tests/lab/a.test.js', 'a1'), t('/r/dist/tests/lab/b.test.js', 'b1')], 4).workers).to.have.length(1);
  });

  it('the run exits as its worst worker: usage, interrupt, failure; 125 only when every worker could test nothing', () => {
    expect(jobsExitStatus([0, 0])).to.equal(0);
    expect(jobsExitStatus([0, 1])).to.equal(1);
    expect(jobsExitStatus([1, 130])).to.equal(130);
    expect(jobsExitStatus([130, 128])).to.equal(128);
    expect(jobsExitStatus([125, 0])).to.equal(0);
    expect(jobsExitStatus([125, 125])).to.equal(125);
    expect(jobsExitStatus([0, 137])).to.equal(1);
  });
});
