import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processStart } from '../../harness/util/owner.js';
import { RUN_TMP_PREFIX, runTmpOwner, sweepRunTmpDirs } from '../../harness/util/run-tmp.js';

describe('run temp folders: swept only where the owner is dead', () => {
  it("removes a dead pid's folder and a reused pid's (start time differs); keeps a live run's and names not ours", () => {
    const root = mkdtempSync(join(tmpdir(), 'run-tmp-'));
    try {
      const live = `${RUN_TMP_PREFIX}${process.ppid}-${processStart(process.ppid)}`;
      const reused = `${RUN_TMP_PREFIX}${process.ppid}-1`;
      const dead = `${RUN_TMP_PREFIX}4194305-77`;
      const other = 'harness-qemu--123-abc';
      for (const n of [live, reused, dead, other]) mkdirSync(join(root, n));
      expect(runTmpOwner(dead)).to.deep.equal({ pid: 4194305, start: '77' });
      expect(runTmpOwner(other)).to.equal(undefined);
      expect(sweepRunTmpDirs(root).sort()).to.deep.equal([join(root, dead), join(root, reused)].sort());
      expect(readdirSync(root).sort()).to.deep.equal([live, other].sort());
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
