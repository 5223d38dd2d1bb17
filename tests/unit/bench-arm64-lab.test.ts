// The arm64 lab bench's milestones (bench/arm64-lab.ts) read from real arm-smmuv3,accel=on traces
// (tests/fixtures/trace/arm64/README.md): times from the trace's own -msg timestamp=on prefixes.
import { expect } from 'chai';
import { l2Milestones } from '../../bench/arm64-lab.js';
import { fixtureModel, textModel, traceFixture } from './trace-fixtures.js';

/** The first line's time: the trace's start stands in for the spawn in these tests. */
const startOf = (name: string): number => Date.parse(traceFixture(`arm64/${name}`).slice(0, 27));

describe('arm64 lab bench: L2 milestones from its trace', function () {
  it('booted guest: parent, vIOMMU, vdevice, and the nested HWPT after the vdevice (not the abort or bypass HWPT on the vIOMMU)', function () {
    const name = 'l2-accel-boot.trace';
    // 04:51:42.973 first line; parent 43.016; alloc_viommu 43.348; alloc_vdev 51.436; nested (out_hwpt=9) 51.487.
    expect(l2Milestones(fixtureModel(`arm64/${name}`), startOf(name))).to.deep.equal({ firstHwptMs: 43, viommuMs: 375, vdevMs: 8463, nestedMs: 8514 });
  });

  it('paused: the vIOMMU but no vdevice, so no nested HWPT (its abort and bypass HWPTs on the vIOMMU are not one)', function () {
    const name = 'l2-accel-paused.trace';
    const m = l2Milestones(fixtureModel(`arm64/${name}`), startOf(name));
    expect(Object.keys(m).sort()).to.deep.equal(['firstHwptMs', 'viommuMs']);
  });

  it('without the IORT override: a failed IOMMU_VIOMMU_ALLOC is no milestone', function () {
    const name = 'l2-accel-no-iort-override.trace';
    const m = l2Milestones(fixtureModel(`arm64/${name}`), startOf(name));
    expect(Object.keys(m)).to.deep.equal(['firstHwptMs']);
  });

  it('a trace without time prefixes is an error naming the first milestone line, not a zero', function () {
    const text = traceFixture('arm64/l2-accel-paused.trace').replace(/^\S+Z /gm, '');
    expect(() => l2Milestones(textModel(text), 0)).to.throw(/trace line 6 has no time prefix/);
  });
});
