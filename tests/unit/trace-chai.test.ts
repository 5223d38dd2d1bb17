// iommufd lines are written from the facts sheet, not captured: tests/fixtures/trace/README.md
// (the real captures: trace-smmuv3, trace-retry-realize and trace-l1-captures tests).
import * as chai from 'chai';
import { expect } from 'chai';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { expectHwpt } from '../../harness/trace/oracle.js';
import { failure, fixtureModel } from './trace-fixtures.js';

chai.use(iommufdAssertions);

const model = (name: string) => fixtureModel(name, { garbled: name === 'garbled.log' });

describe('trace chai plugin', function () {
  it('allocatedHwpt passes on a matching allocation and fails naming flags and quoting lines', function () {
    const m = model('facts-vtd-nested-pasid.log');
    expect(m).to.have.allocatedHwpt({ flags: ['NEST_PARENT', 'DIRTY_TRACKING', 'PASID'], devId: 1, ptId: 2 });
    expect(m).to.have.allocatedHwpt({ flags: ['PASID'], hwptType: 'VTD_S1', len: 24, ptKind: 'hwpt' });
    expect(m).not.to.have.allocatedHwpt({ flags: ['NEST_PARENT', 'PASID'] });
    const msg = failure(() => expect(m).to.have.allocatedHwpt({ flags: ['NEST_PARENT', 'PASID'] }));
    expect(msg).to.include('flags=0x9 (NEST_PARENT|PASID)');
    expect(msg).to.include('L4: dev_id=1 pt_id=2 (ioas) flags=0xb (NEST_PARENT|DIRTY_TRACKING|PASID) hwpt_type=0 len=0 → id=3 ret=0: OK [parent]');
    expect(msg).to.include('  L4: iommufd_backend_alloc_hwpt  iommufd=20 dev_id=1 pt_id=2 flags=0xb');
  });

  it('allocatedHwpt means success unless ret says otherwise; requestedHwpt takes any answer', function () {
    const m = model('facts-fsts-eopnotsupp.log');
    expect(m).not.to.have.allocatedHwpt({ flags: ['NEST_PARENT'] });
    // The trace has -1; EOPNOTSUPP comes from QEMU's message, and -1 is not EPERM.
    expect(m).to.have.allocatedHwpt({ flags: ['NEST_PARENT'], ret: 'EOPNOTSUPP' });
    expect(m).to.have.allocatedHwpt({ flags: ['NEST_PARENT'], ret: -95 });
    expect(m).to.have.allocatedHwpt({ flags: ['NEST_PARENT'], ret: -1 });
    expect(m).not.to.have.allocatedHwpt({ flags: ['NEST_PARENT'], ret: 'EPERM' });
    expect(m).to.have.requestedHwpt({ flags: ['NEST_PARENT'] });
    const msg = failure(() => expect(m).to.have.allocatedHwpt({ flags: ['NEST_PARENT'] }));
    expect(msg).to.include('ret=0 (OK)');
    expect(msg).to.include("ret=-1: EOPNOTSUPP (from QEMU's message: trace file line 7: qemu-system-x86_64: -device vfio-pci");
  });

  it('freedEverything lists what is still live with its line', function () {
    expect(model('facts-hotplug-no-viommu.log')).to.have.freedEverything();
    const msg = failure(() => expect(model('facts-two-devices-reuse.log')).to.have.freedEverything());
    expect(msg).to.include('2 still live');
    expect(msg).to.include('hwpt 3 (iommufd 12) allocated at L4: iommufd_backend_alloc_hwpt');
  });

  it('attached matches pasid, device and target', function () {
    const m = model('facts-two-devices-reuse.log');
    expect(m).to.have.attached({ pasid: 0 });
    expect(m).to.have.attached({ devId: 4, targetId: 3, targetKind: 'hwpt' });
    const msg = failure(() => expect(m).to.have.attached({ pasid: 1 }));
    expect(msg).to.include('expected an attach matching {"pasid":1}');
    expect(msg).to.include('L7: 0000:00:04.0 devid=4 pasid=0 → id=3 (hwpt parent)');
  });

  it('requestedPerOracle compares the request with the oracle, and the reuse rule', function () {
    const host = { dirtyTracking: false, maxPasidLog2: 0 };
    const none = expectHwpt({ kind: 'none' }, host);
    const m = model('facts-two-devices-reuse.log');
    expect(m).to.have.requestedPerOracle(none, { devId: 1 });
    expect(m).to.have.requestedPerOracle(expectHwpt({ kind: 'none' }, host, { reusesExistingHwpt: true }), { devId: 4 });
    const fsts = expectHwpt({ kind: 'intel-iommu', fsts: true }, host);
    expect(model('facts-fsts-eopnotsupp.log')).to.have.requestedPerOracle(fsts);
    const msg = failure(() => expect(m).to.have.requestedPerOracle(fsts, { devId: 1 }));
    expect(msg.split('\n')[0]).to.equal('dev_id 1: requested 0x0 (none), expected 0x1 (NEST_PARENT): fsts wants a nesting parent');
    expect(msg).to.include('NEST_PARENT: the vIOMMU wants a nesting parent');
  });

  it('mentions unparsed lines and rejects what is not a model', function () {
    const msg = failure(() => expect(model('garbled.log')).to.have.allocatedHwpt({ flags: ['PASID'] }));
    expect(msg).to.include('3 trace line(s) did not parse');
    expect(msg).to.include('L3: iommufd_backend_alloc_hwpt  iommufd=12 dev_id=1 pt_id=2 flags=0x9 hwpt_ty');
    expect(() => expect([]).to.have.freedEverything()).to.throw(TypeError, /expected an IommufdModel.*got Array/);
  });
});
