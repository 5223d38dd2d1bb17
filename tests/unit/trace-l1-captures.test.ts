import * as chai from 'chai';
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { skipBecause } from '../../harness/report/skip.js';
import { iommufdAssertions } from '../../harness/trace/chai-plugin.js';
import { defaultTraceEventsPath, TraceFormats } from '../../harness/trace/formats.js';
import { IommufdModel } from '../../harness/trace/model.js';
import { parseTrace } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';

chai.use(iommufdAssertions);

/** The parser and the model on real traces from the virtual lab (tests/fixtures/trace/README.md). */
describe('trace model on real virtual-lab captures', () => {
  let formats: TraceFormats;
  before(async function () {
    const path = defaultTraceEventsPath();
    if (!existsSync(path)) skipBecause(this, `no trace-events-all at ${path} (reference QEMU not installed)`);
    formats = await TraceFormats.load(path);
  });
  const model = (name: string) => {
    const r = parseTrace(readFileSync(join(repoRoot, 'tests', 'fixtures', 'trace', 'l1', name), 'utf8'), formats);
    expect(r.diagnostics, 'lines that did not parse').to.deep.equal([]);
    return IommufdModel.fromParse(r);
  };

  it('fsts=on, pasid-bits=20, PASID device: a 0x9 request that failed, the IOAS freed', () => {
    const m = model('vtd-fsts-pasid20-pasid-device-0x9-refused.log');
    expect(m).to.have.requestedHwpt({ flags: ['NEST_PARENT', 'PASID'], devId: 1, ptKind: 'ioas' });
    expect(m).to.not.have.allocatedHwpt();
    expect(m.hwptAllocs[0]!.ret).to.be.lessThan(0);
    expect(m).to.have.freedEverything();
    expect(m.devIdOf('0000:05:00.0')).to.equal(1);
  });

  it('two devices without a vIOMMU: one allocation, the second device attaches to it', () => {
    const m = model('no-viommu-two-devices-shared-hwpt.log');
    expect(m.hwptAllocs).to.have.length(1);
    const targets = m.attaches.map((a) => [a.name, a.targetId]);
    expect(targets).to.deep.equal([
      ['0000:01:00.0', 3],
      ['0000:02:00.0', 3],
    ]);
    expect(m.devIdOf('0000:02:00.0')).to.equal(4);
  });

  it('two devices under intel-iommu: an IOAS and an HWPT each', () => {
    const m = model('vtd-two-devices-own-ioas-each.log');
    expect(m.hwptAllocs.map((h) => [h.devId, h.ptId, h.flags])).to.deep.equal([
      [1, 2, 0],
      [4, 5, 0],
    ]);
  });

  it('hot-plug cycles: attach, detach, frees of the HWPT and the IOAS, ids reused', () => {
    const m = model('no-viommu-hotplug-3-cycles.log');
    expect(m.hwptAllocs).to.have.length(3);
    expect(m.detaches).to.have.length(3);
    expect(m.frees.length).to.equal(6);
    expect(m).to.have.freedEverything();
    expect(m.maps.map).to.be.greaterThan(0);
  });
});
