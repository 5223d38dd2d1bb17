import { expect } from 'chai';
import { existsSync, readdirSync } from 'node:fs';
import { LabHost } from '../../harness/lab/lab-host.js';
import { skipBecause } from '../../harness/report/skip.js';

/**
 * The lab suites run where the host has a real IOMMU exposed through iommufd:
 * a lab machine, or the virtual lab's L1. Elsewhere they skip, saying why.
 */
describe('lab host', function () {
  before(function () {
    const why = LabHost.unavailableReason();
    if (why) skipBecause(this, why);
  });

  it('has an IOMMU instance and vfio device cdev support', () => {
    expect(readdirSync('/sys/class/iommu')).to.not.have.length(0);
    expect(existsSync('/sys/class/vfio-dev') || existsSync('/dev/vfio'), 'vfio present').to.equal(true);
  });
});
