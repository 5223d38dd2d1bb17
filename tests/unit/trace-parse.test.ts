import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { convertValue, TraceFormats } from '../../harness/trace/formats.js';
import { parseTrace, parseTraceFile, TraceLineParser, TraceStreamParser, type EventRecord, type ParsedLine } from '../../harness/trace/parse.js';
import { repoRoot } from '../../harness/util/paths.js';

const FIX = join(repoRoot, 'tests', 'fixtures', 'trace');
const fixture = (name: string): string => readFileSync(join(FIX, name), 'utf8');
const formats = TraceFormats.fromText(fixture('trace-events-11.1.3-excerpt'), 'excerpt');
const events = (recs: readonly { kind: string }[]): EventRecord[] => recs.filter((r): r is EventRecord => r.kind === 'event');

describe('trace parse: real captures', function () {
  for (const name of ['q35-vtd-pci.log', 'q35-vtd-pci-timestamp.log', 'qmp-memory.log']) {
    it(`${name}: every line is a typed event record`, function () {
      const text = fixture(name);
      const lines = text.split('\n').filter(Boolean).length;
      const r = parseTrace(text, formats);
      expect(r.diagnostics).to.deep.equal([]);
      expect(r.records).to.have.length(lines);
      expect(r.records.every((x) => x.kind === 'event')).to.equal(true);
    });
  }

  it('types fields: hex, signed, strings, pointers', function () {
    const r = events(parseTrace(fixture('q35-vtd-pci.log'), formats).records);
    const cfg = r.find((x) => x.event === 'pci_cfg_read')!;
    expect(cfg.raw).to.equal('pci_cfg_read mch 00:00.0 @0x0 -> 0x8086');
    expect(cfg.fields).to.deep.equal({ dev: 'mch', bus: 0, slot: 0, func: 0, offs: 0, val: 0x8086 });
    const sw = r.find((x) => x.event === 'vtd_switch_address_space')!;
    expect(sw.fields).to.deep.equal({ bus: 0, slot: 0, fn: 0, enabled: 0 });
    const q = events(parseTrace(fixture('qmp-memory.log'), formats).records);
    const w = q.find((x) => x.event === 'memory_region_ops_write')!;
    expect(w.fields.cpu_index).to.equal(-1);
    expect(w.fields.mr).to.equal(0x55557c65d340);
    expect(w.fields.name).to.equal('apic-msi');
    const cmd = q.find((x) => x.event === 'handle_qmp_command')!;
    expect(cmd.fields.req).to.equal('{"execute": "qmp_capabilities", "arguments": {}}');
  });

  it('reads the -msg timestamp=on prefix', function () {
    const r = events(parseTrace(fixture('q35-vtd-pci-timestamp.log'), formats).records);
    expect(r[0]!.time).to.equal('2026-11-26T01:52:49.260789Z');
    expect(r[0]!.event).to.equal('vtd_context_cache_reset');
    expect(r.every((x) => x.time !== undefined)).to.equal(true);
    const plain = events(parseTrace(fixture('q35-vtd-pci.log'), formats).records);
    expect(plain[0]!.time).to.equal(undefined);
  });

  it('keeps QEMU warnings sharing the file as raw records, in order', function () {
    const r = parseTrace(fixture('stderr-mixed.log'), formats);
    expect(r.diagnostics).to.deep.equal([]);
    expect(r.records[0]).to.include({ kind: 'raw', reason: 'foreign', line: 1 });
    expect(r.records[0]!.raw).to.match(/^qemu-system-x86_64: -mon .*deprecated/);
    expect(r.records[1]).to.include({ kind: 'event', event: 'handle_qmp_command', line: 2 });
  });
});

describe('trace parse: bad and unusual input', function () {
  it('reports garbled lines of known events with their line numbers and keeps unknown events raw', function () {
    const r = parseTrace(fixture('garbled.log'), formats);
    expect(r.diagnostics.map((d) => [d.line, d.event])).to.deep.equal([
      [3, 'iommufd_backend_alloc_hwpt'],
      [4, 'iommufd_backend_free_id'],
      [8, 'iommufd_cdev_pasid_attach_ioas_hwpt'],
    ]);
    expect(r.diagnostics[0]!.message).to.match(/^line 3: does not match the format of iommufd_backend_alloc_hwpt/);
    expect(r.diagnostics[0]!.raw).to.equal('iommufd_backend_alloc_hwpt  iommufd=12 dev_id=1 pt_id=2 flags=0x9 hwpt_ty');
    const unknown = r.records.find((x) => x.line === 5)!;
    expect(unknown).to.include({ kind: 'raw', reason: 'unknown-event', event: 'iommufd_backend_get_device_info' });
    expect(r.records.map((x) => x.line)).to.deep.equal([1, 2, 5, 6, 7]);
  });

  it('gives bigints beyond 2^53, numbers below; strips CRLF; reads the old pid@sec.usec prefix', function () {
    const r = events(parseTrace(fixture('bigint-crlf-oldprefix.log'), formats).records);
    expect(r[0]!.fields.val).to.equal(0xfffffffffffff000n);
    expect(r[0]!.fields.addr).to.equal(0);
    expect(r[1]!.fields.addr).to.equal(0x1f000000000000);
    expect(typeof r[1]!.fields.addr).to.equal('number');
    expect(r[1]!.fields.slpte).to.equal(0x8000000000000003n);
    expect(r[1]!.raw.endsWith('\r')).to.equal(false);
    expect(r[2]).to.include({ event: 'vtd_reset_exit', pid: 4242, time: '2025-11-26T00:48:05.019408Z' });
  });

  it('parses formats that begin with a space (two spaces after the name)', function () {
    const p = new TraceLineParser(formats);
    const ok = p.parseLine('iommufd_backend_free_id  iommufd=12 id=3 (-2)', 1);
    expect(ok).to.deep.include({ kind: 'event', fields: { iommufd: 12, id: 3, ret: -2 } });
    const one = p.parseLine('iommufd_backend_free_id iommufd=12 id=3 (-2)', 2);
    expect(one.kind).to.equal('diagnostic');
  });

  it('an empty-format event parses with or without its trailing space', function () {
    const p = new TraceLineParser(formats);
    expect(p.parseLine('vtd_reset_exit ', 1)).to.include({ kind: 'event', event: 'vtd_reset_exit' });
    expect(p.parseLine('vtd_reset_exit', 1)).to.include({ kind: 'event', event: 'vtd_reset_exit' });
  });
});

describe('trace parse: streaming', function () {
  it('gives the same records whatever the chunk boundaries', function () {
    const text = fixture('q35-vtd-pci-timestamp.log') + fixture('garbled.log') + fixture('bigint-crlf-oldprefix.log');
    const whole = parseTrace(text, formats);
    let seed = 7;
    const rand = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const got: ParsedLine[] = [];
    const p = new TraceStreamParser(formats, (x) => got.push(x));
    for (let i = 0; i < text.length; ) {
      const n = 1 + Math.floor(rand() * 97);
      p.push(text.slice(i, i + n));
      i += n;
    }
    p.end();
    expect(got.filter((x) => x.kind !== 'diagnostic')).to.deep.equal(whole.records);
    expect(got.filter((x) => x.kind === 'diagnostic')).to.deep.equal(whole.diagnostics);
  });

  it('parses a final line without a newline only at end()', function () {
    const got: ParsedLine[] = [];
    const p = new TraceStreamParser(formats, (x) => got.push(x));
    p.push('vtd_reset_exit \nvtd_dmar_enable enable 1');
    expect(got).to.have.length(1);
    p.end();
    expect(got[1]).to.deep.include({ event: 'vtd_dmar_enable', fields: { en: 1 }, line: 2 });
  });

  it('parseTraceFile streams a file to the same result', async function () {
    const r = await parseTraceFile(join(FIX, 'qmp-memory.log'), formats);
    expect(r).to.deep.equal(parseTrace(fixture('qmp-memory.log'), formats));
  });
});

describe('trace parse: value conversion', function () {
  it('converts at the 2^53 boundary, upper-case hex, pointers and signs', function () {
    expect(convertValue('hex', '1fffffffffffff')).to.equal(Number.MAX_SAFE_INTEGER);
    expect(convertValue('hex', '20000000000000')).to.equal(2n ** 53n);
    expect(convertValue('hex', 'DEADBEEF')).to.equal(0xdeadbeef);
    expect(convertValue('hex', '0000000000000000ff')).to.equal(255);
    expect(convertValue('ptr', '(nil)')).to.equal(0);
    expect(convertValue('ptr', '0x55557c65d340')).to.equal(0x55557c65d340);
    expect(convertValue('int', '-9223372036854775808')).to.equal(-(2n ** 63n));
    expect(convertValue('uint', '18446744073709551615')).to.equal(2n ** 64n - 1n);
    expect(convertValue('int', ' -5')).to.equal(-5);
    expect(convertValue('oct', '0755')).to.equal(0o755);
    expect(convertValue('str', '0x10')).to.equal('0x10');
  });
});
