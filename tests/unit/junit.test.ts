import { expect } from 'chai';
import { junitXml, skipsByReason, summaryText, type TestResult } from '../../harness/report/junit.js';

const results: TestResult[] = [
  { suite: 'qmp', title: 'ids', state: 'passed', durationMs: 12 },
  { suite: 'qmp', title: 'oob <&>', state: 'failed', durationMs: 5, error: 'AssertionError: expected "a"\n  at x', artifactsDir: '/a/qmp/oob' },
  { suite: 'lab', title: 'nesting', state: 'skipped', durationMs: 0, skipReason: 'host IOMMU has no nesting (ecap.NEST=0)' },
  { suite: 'lab', title: 'pasid', state: 'skipped', durationMs: 0, skipReason: 'host IOMMU has no nesting (ecap.NEST=0)' },
  { suite: 'lab', title: 'smmu', state: 'skipped', durationMs: 0, skipReason: 'no KVM' },
];

describe('report', () => {
  it('writes JUnit with failures, skip reasons and escaped text', () => {
    const x = junitXml(results);
    expect(x).to.include('<testsuites name="viommu-harness" tests="5" failures="1" skipped="3"');
    expect(x).to.include('name="oob &lt;&amp;&gt;"');
    expect(x).to.include('<failure message="AssertionError: expected &quot;a&quot;">');
    expect(x).to.include('<skipped message="no KVM"/>');
    expect(x).to.include('<system-out>artifacts: /a/qmp/oob</system-out>');
  });

  it('gives each suite its first test’s start as JUnit’s timestamp (UTC, no zone) and each test its file', () => {
    const x = junitXml([
      { suite: 'qmp', title: 'b', state: 'passed', durationMs: 1, startedAt: '2026-12-02T07:30:05.250Z', file: 'tests/qemu/qmp.test.ts' },
      { suite: 'qmp', title: 'a', state: 'passed', durationMs: 1, startedAt: '2026-12-02T07:30:01.900Z', file: 'tests/qemu/qmp.test.ts' },
      { suite: 'old', title: 'c', state: 'passed', durationMs: 1 },
    ]);
    expect(x).to.include('<testsuite name="qmp" tests="2" failures="0" skipped="0" time="0.002" timestamp="2026-12-02T07:30:01">');
    expect(x).to.include('<testcase classname="qmp" name="b" time="0.001" file="tests/qemu/qmp.test.ts"');
    expect(x).to.include('<testsuite name="old" tests="1" failures="0" skipped="0" time="0.001">');
  });

  it('counts skips per reason, most frequent first', () => {
    expect(skipsByReason(results)).to.deep.equal([
      { reason: 'host IOMMU has no nesting (ecap.NEST=0)', count: 2 },
      { reason: 'no KVM', count: 1 },
    ]);
  });

  it('ends with the plain closing line', () => {
    const lines = summaryText(results).split('\n');
    expect(lines.at(-1)).to.equal('1 passed, 1 failed, 3 skipped');
    expect(lines).to.include('  qmp › oob <&>: /a/qmp/oob');
  });
});
