import { expect } from 'chai';
import { needsSoakNodeFlags } from '../../harness/cli/soak-node.js';
import { missingSoakNodeFlags, SOAK_NODE_FLAGS } from '../../harness/lab/soak.js';

// That a lab run really re-runs itself under the flags is asserted where it happens: the soak
// test in the lab suite (tests/lab/soak.test.ts) checks its own process, in each virtual lab's L1.
describe("the soak's Node flags (harness/cli/soak-node.ts)", () => {
  it('a run hands itself to a child with the flags only where the lab suite runs in it, can run here, and they are missing', () => {
    expect(needsSoakNodeFlags({ runsLab: true, labUnavailable: undefined, execArgv: [] })).to.equal(true);
    expect(needsSoakNodeFlags({ runsLab: true, labUnavailable: undefined, execArgv: ['--enable-source-maps'] })).to.equal(true);
    expect(needsSoakNodeFlags({ runsLab: true, labUnavailable: undefined, execArgv: [...SOAK_NODE_FLAGS] }), 'already the child').to.equal(false);
    expect(
      needsSoakNodeFlags({ runsLab: false, labUnavailable: undefined, execArgv: [] }),
      'no lab suite (L0 runs the virtual lab; --spec files alone)',
    ).to.equal(false);
    expect(needsSoakNodeFlags({ runsLab: true, labUnavailable: 'no /dev/iommu', execArgv: [] }), 'the lab suite skips whole here').to.equal(false);
    expect(missingSoakNodeFlags(['--enable-source-maps', SOAK_NODE_FLAGS[0]!])).to.deep.equal(SOAK_NODE_FLAGS.slice(1));
  });
});
