import { expect } from 'chai';
import Mocha from 'mocha';
import { appendFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { followJsonLines, L1Results } from '../../harness/lab/l1-results.js';
import type { TestResult } from '../../harness/report/junit.js';
import { collectTests, exactTitles, filterTests, fullTitle, grepRegExp, listTestsSync, repeatTests, testKey, type ListedTest } from '../../harness/testing/test-list.js';

/** A suite tree as mocha builds it from describe/it: root › a › (t1, b › t2), root › t0. */
function tree(): Mocha.Suite {
  const root = new Mocha.Suite('', new Mocha.Context());
  root.root = true;
  root.addTest(new Mocha.Test('t0', () => {}));
  const a = Mocha.Suite.create(root, 'a');
  a.file = '/x/a.test.js';
  a.addTest(new Mocha.Test('t1', () => {}));
  const b = Mocha.Suite.create(a, 'b');
  b.addTest(new Mocha.Test('t2', () => {}));
  return root;
}

const result = (suite: string, title: string, state: TestResult['state'], file = '/x/lab/a.test.js'): TestResult => ({ suite, title, state, durationMs: 1, file });
const listed = (path: string[], title: string, file = '/x/lab/a.test.js'): ListedTest => ({ file, path, title });

describe('static test list', () => {
  it('lists every test with its title path and file, in run order', () => {
    const l = collectTests(tree()).map((x) => x.listed);
    expect(l.map(testKey)).to.deep.equal(['t0', 'a › t1', 'a › b › t2']);
    expect(l.map(fullTitle)).to.deep.equal(['t0', 'a t1', 'a b t2']);
    expect(l[1]!.file).to.equal('/x/a.test.js');
  });

  it('filters the tree and repeats what is left, the first copy keeping its title', () => {
    const root = tree();
    filterTests(root, (t) => t.title !== 't1');
    repeatTests(root, 3);
    expect(collectTests(root).map((x) => testKey(x.listed))).to.deep.equal(['t0', 't0 (repeat 2/3)', 't0 (repeat 3/3)', 'a › b › t2', 'a › b › t2 (repeat 2/3)', 'a › b › t2 (repeat 3/3)']);
  });

  it("reads --grep as mocha does (a regular expression, /re/flags too) and names a bad one", () => {
    expect(grepRegExp('a\\.t1').test('a t1')).to.equal(false);
    expect(grepRegExp('a t[12]').test('a t1')).to.equal(true);
    expect(grepRegExp('/A T1/i').test('a t1')).to.equal(true);
    expect(() => grepRegExp('(')).to.throw(/--grep "\(" is not a regular expression/);
    const re = new RegExp(exactTitles(['a (b) [c] 0x9|x', 'd']));
    expect(re.test('a (b) [c] 0x9|x')).to.equal(true);
    expect(re.test('d')).to.equal(true);
    expect(re.test('a (b) [c] 0x9')).to.equal(false);
  });

  it("lists the compiled lab suites without running them (L1's tests, as the virtual lab registers them)", function () {
    this.timeout(60_000);
    const l = listTestsSync(['lab']);
    expect(l.length).to.be.greaterThan(10);
    for (const t of l) expect(t.file).to.match(/\/dist\/tests\/lab\/[^/]+\.test\.js$/);
    expect(new Set(l.map(testKey)).size, 'L1 test titles are unique (results are matched by title)').to.equal(l.length);
  });
});

describe("L1's results against the list of tests it was expected to run", () => {
  const expected = [listed(['s'], 'one'), listed(['s'], 'two'), listed(['t'], 'three', '/x/lab/b.test.js')];

  it('finds each result by its L0 title, --repeat copies included', async () => {
    const l1 = new L1Results(expected).finish({ status: 0, results: [result('s', 'one', 'passed'), result('s', 'one (repeat 2/2)', 'passed')] });
    expect((await l1.result('L1 › s › one'))?.state).to.equal('passed');
    expect((await l1.result('L1 › s › one (repeat 2/2)'))?.state).to.equal('passed');
    expect(l1.unexpected()).to.deep.equal([]);
  });

  it('hands each waiting test its result as L1 reports it, and undefined to those left when L1 ends', async () => {
    const l1 = new L1Results(expected);
    const one = l1.result('L1 › s › one');
    const two = l1.result('L1 › s › two');
    l1.add(result('s', 'one', 'failed'));
    expect((await one)?.state).to.equal('failed');
    expect(l1.finished).to.equal(false);
    l1.finish({ status: 1, results: [], error: 'agent: L1 did not answer within 1200000 ms' });
    expect(await two).to.equal(undefined);
    expect(l1.missingReason('L1 › s › two')).to.equal(
      `L1 did not report it: L1's harness run did not finish (agent: L1 did not answer within 1200000 ms) after 1 results (the last was "s › one"): crashed or killed?`,
    );
    expect(l1.statusProblem()).to.equal("L1's harness run did not finish: agent: L1 did not answer within 1200000 ms");
  });

  it('follows a file of JSON lines as another machine appends to it, partial lines included', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'harness-jsonl-')), 'results.jsonl');
    const seen: unknown[] = [];
    const f = followJsonLines(file, (v) => seen.push(v), 20);
    await new Promise((r) => setTimeout(r, 50));
    appendFileSync(file, '{"a":1}\n{"b"');
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).to.deep.equal([{ a: 1 }]);
    appendFileSync(file, ':2}\nnot json\n{"c":3}\n');
    f.stop();
    expect(seen).to.deep.equal([{ a: 1 }, { b: 2 }, { c: 3 }]);
    expect(f.bad).to.deep.equal(['not json']);
  });

  it('says why a test is missing: L1 stopped after N results, or its suite file gave none', () => {
    const l1 = new L1Results(expected).finish({ status: 137, results: [result('s', 'one', 'passed')] });
    expect(l1.missingReason('L1 › s › two')).to.equal(`L1 did not report it: L1's harness run exited 137 after 1 results (the last was "s › one"): crashed or killed?`);
    expect(l1.missingReason('L1 › t › three')).to.equal(
      "L1 did not report it: no result at all from its suite file /x/lab/b.test.js (missing in L1, or it failed to load); L1's harness run exited 137 after 1 results",
    );
  });

  it("fails an exit status the results do not explain: non-zero with no failed result, 0 with a failure", () => {
    const ok = [result('s', 'one', 'passed')];
    expect(new L1Results(expected).finish({ status: 0, results: ok }).statusProblem()).to.equal(undefined);
    expect(new L1Results(expected).finish({ status: 1, results: ok }).statusProblem()).to.equal("L1's harness run exited 1, but its 1 results (1 passed, 0 failed, 0 skipped) call for 0");
    expect(new L1Results(expected).finish({ status: 0, results: [result('s', 'one', 'failed')] }).statusProblem()).to.match(/exited 0, .* call for 1$/);
    expect(new L1Results(expected).finish({ status: 125, results: [result('s', 'one', 'skipped')] }).statusProblem()).to.equal(undefined);
  });

  it('names results the list did not expect', () => {
    const l1 = new L1Results(expected).finish({ status: 0, results: [result('s', 'one', 'passed'), result('u', 'new', 'passed')] });
    expect(l1.unexpected().map((r) => r.title)).to.deep.equal(['new']);
  });
});
