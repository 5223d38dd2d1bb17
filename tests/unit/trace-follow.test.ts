import { expect } from 'chai';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TraceFollower } from '../../harness/trace/follow.js';
import { TraceFormats } from '../../harness/trace/formats.js';
import { DeadlineError, sleep } from '../../harness/util/deadline.js';
import { repoRoot } from '../../harness/util/paths.js';

const FIX = join(repoRoot, 'tests', 'fixtures', 'trace');
const formats = TraceFormats.fromText(readFileSync(join(FIX, 'trace-events-11.1.3-excerpt'), 'utf8'));
const lines = readFileSync(join(FIX, 'facts-hotplug-no-viommu.log'), 'utf8').split('\n').filter(Boolean);

describe('trace follow: a file still being written', function () {
  let dir: string;
  let follower: TraceFollower | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'trace-follow-'));
  });
  afterEach(async () => {
    await follower?.close();
    follower = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('waits for a record written later, even one split across writes, and for a file not yet created', async function () {
    const path = join(dir, 'trace.log');
    follower = TraceFollower.start(path, formats, { intervalMs: 10 });
    const waiting = follower.waitForEvent('iommufd_backend_alloc_hwpt', 2000, (f) => f.dev_id === 1);
    const started = Date.now();
    writeFileSync(path, lines.slice(0, 6).join('\n') + '\n');
    await sleep(30);
    const hwpt = lines[6]!;
    appendFileSync(path, hwpt.slice(0, 30));
    await sleep(30);
    appendFileSync(path, hwpt.slice(30) + '\n');
    const r = await waiting;
    expect(r.line).to.equal(7);
    expect(r.fields.flags).to.equal(0);
    expect(Date.now() - started).to.be.lessThan(1000);
    expect(follower.records).to.have.length(7);
  });

  it('finds a record that arrived before the wait began', async function () {
    const path = join(dir, 'trace.log');
    writeFileSync(path, lines.join('\n') + '\n');
    follower = TraceFollower.start(path, formats, { intervalMs: 10 });
    const r = await follower.waitForRecord((x) => x.kind === 'event' && x.event === 'iommufd_backend_free_id', 1000);
    expect(r.line).to.equal(10);
  });

  it('fails at the deadline naming what it waited for and the last lines seen', async function () {
    const path = join(dir, 'trace.log');
    writeFileSync(path, lines.slice(0, 2).join('\n') + '\n');
    follower = TraceFollower.start(path, formats, { intervalMs: 10 });
    const started = Date.now();
    let err: unknown;
    try {
      await follower.waitForEvent('iommufd_backend_free_id', 150);
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(DeadlineError);
    expect((err as Error).message).to.match(/waiting for iommufd_backend_free_id in .*trace\.log: no answer within 150 ms/);
    expect((err as Error).message).to.include('2: iommufd_cdev_connect_and_bind');
    expect(Date.now() - started).to.be.lessThan(1000);
  });

  it('close() parses a final unterminated line and reports it if truncated', async function () {
    const path = join(dir, 'trace.log');
    writeFileSync(path, lines[0] + '\n' + lines[6]!.slice(0, 40));
    follower = TraceFollower.start(path, formats, { intervalMs: 10 });
    await follower.waitForRecord(() => true, 1000);
    await follower.close();
    expect(follower.records).to.have.length(1);
    expect(follower.diagnostics.map((d) => d.line)).to.deep.equal([2]);
  });
});
