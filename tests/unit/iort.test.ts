import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { IORT_MAF_CANWBS, parseIort, patchIortCanwbs, rootComplexFlags, tableUpgradeLine } from '../../harness/lab/iort.js';
import { repoRoot } from '../../harness/util/paths.js';

/** The IORT override, on the table QEMU 11.1.3 built for the arm64 lab's L1 (tests/fixtures/acpi). */
describe('IORT override (CANWBS on the root complex)', () => {
  const orig = readFileSync(join(repoRoot, 'tests', 'fixtures', 'acpi', 'qemu-11.1.3-virt-smmuv3-nested-IORT.aml'));

  it("parses QEMU's table: ITS group, SMMUv3, root complex, and the root complex's memory access flags at 0xb7", () => {
    const t = parseIort(orig);
    expect({
      oemId: t.oemId,
      oemTableId: t.oemTableId,
      oemRevision: t.oemRevision,
      revision: t.revision,
      checksumOk: t.checksumOk,
      length: t.length,
    }).to.deep.equal({
      oemId: 'BOCHS ',
      oemTableId: 'BXPC    ',
      oemRevision: 1,
      revision: 5,
      checksumOk: true,
      length: 236,
    });
    expect(t.nodes.map((n) => [n.type, n.offset, n.length])).to.deep.equal([
      [0, 48, 24],
      [4, 72, 88],
      [2, 160, 76],
    ]);
    // CPM | DACS, no CANWBS: why the kernel refuses IOMMU_VIOMMU_ALLOC on QEMU's own table.
    expect(rootComplexFlags(orig)).to.deep.equal([{ offset: 0xb7, flags: 0x03 }]);
  });

  it('sets CANWBS, raises oem_revision and fixes the checksum, changing nothing else', () => {
    const p = patchIortCanwbs(orig);
    const t = parseIort(p);
    expect(t.checksumOk).to.equal(true);
    expect(t.oemRevision).to.equal(2);
    expect(rootComplexFlags(p)).to.deep.equal([{ offset: 0xb7, flags: 0x03 | IORT_MAF_CANWBS }]);
    const changed = [...p.keys()].filter((i) => p[i] !== orig[i]);
    expect(changed).to.deep.equal([9, 24, 0xb7]);
    expect(tableUpgradeLine(t)).to.equal('ACPI: Table Upgrade: override [IORT-BOCHS -BXPC    ]');
  });

  it('refuses what is not a sound IORT, naming the field', () => {
    const sig = Buffer.from(orig);
    sig.write('DSDT', 0, 'latin1');
    expect(() => parseIort(sig)).to.throw("IORT: signature is 'DSDT', not 'IORT'");
    expect(() => parseIort(orig.subarray(0, 100))).to.throw('IORT: header length 236 but the table has 100 bytes');
    const sum = Buffer.from(orig);
    sum[0xb7] = 0x07;
    expect(() => patchIortCanwbs(sum)).to.throw('IORT: the checksum of the table given is wrong');
    const node = Buffer.from(orig);
    node.writeUInt16LE(500, 160 + 1);
    expect(() => parseIort(node)).to.throw('IORT: node 2 at offset 160 has length 500');
    // The root complex turned into a second ITS group (checksum kept right): nothing to patch.
    const norc = Buffer.from(orig);
    norc[160] = 0;
    norc[9] = (norc[9]! + 2) & 0xff;
    expect(() => patchIortCanwbs(norc)).to.throw('IORT: no root complex node (node types 0, 4, 0)');
  });
});
