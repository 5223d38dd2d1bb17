import { expect } from 'chai';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { traceDecode } from '../../harness/trace/decode-cli.js';
import { repoRoot } from '../../harness/util/paths.js';

const FIX = join(repoRoot, 'tests', 'fixtures', 'trace');
const FORMATS = join(FIX, 'trace-events-11.1.3-excerpt');

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await traceDecode(argv, { stdout, stderr });
  return { code, out, err };
}

describe('trace decode CLI', function () {
  it('--json prints one object per record with fields as numbers and decoded flags', async function () {
    const r = await run([join(FIX, 'facts-fsts-eopnotsupp.log'), '--json', '--formats', FORMATS]);
    expect(r.err).to.equal('');
    expect(r.code).to.equal(0);
    const lines = r.out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).to.have.length(7);
    expect(lines[4]).to.deep.equal({
      line: 5,
      time: '2026-11-26T00:48:05.019408Z',
      event: 'iommufd_backend_alloc_hwpt',
      fields: { iommufd: 12, dev_id: 1, pt_id: 2, flags: 1, hwpt_type: 0, len: 0, data_ptr: 0, out_hwpt: 0, ret: -1 },
      // The raw ioctl result: a failure whose errno the trace does not carry, never "EPERM".
      decoded: { flags: ['NEST_PARENT'], hwpt_type: 'NONE', ret: 'failed (ioctl returned -1; the errno is not in the trace)' },
    });
    expect(lines[6]).to.include({ line: 7, kind: 'foreign' });
  });

  it('writes bigints as exact JSON numbers', async function () {
    const r = await run([join(FIX, 'bigint-crlf-oldprefix.log'), '--json', '--formats', FORMATS]);
    expect(r.code).to.equal(0);
    expect(r.out.split('\n')[0]).to.include('"val":18446744073709547520');
  });

  it('reports garbled lines on stderr with file and line, and exits 1', async function () {
    const file = join(FIX, 'garbled.log');
    const r = await run([file, '--formats', FORMATS]);
    expect(r.code).to.equal(1);
    expect(r.err).to.include(`${file}:3: line 3: does not match the format of iommufd_backend_alloc_hwpt`);
    expect(r.out).to.include('2: iommufd_backend_alloc_hwpt iommufd=12 dev_id=1 pt_id=2 flags=0x0(none)');
    expect(r.out).to.include('5: [unknown-event] iommufd_backend_get_device_info');
  });

  it('exits 128 on bad usage or a missing file, naming the problem', async function () {
    expect((await run([])).code).to.equal(128);
    expect((await run(['a', 'b'])).err).to.include('unexpected argument "b"');
    expect((await run(['x', '--bogus'])).err).to.include('unknown option --bogus');
    const missing = await run([join(FIX, 'no-such.log'), '--formats', FORMATS]);
    expect(missing.code).to.equal(128);
    expect(missing.err).to.include('no-such.log');
    const noFormats = await run([join(FIX, 'garbled.log'), '--formats', join(FIX, 'nope')]);
    expect(noFormats.code).to.equal(128);
    expect(noFormats.err).to.include('trace-events file');
  });
});
