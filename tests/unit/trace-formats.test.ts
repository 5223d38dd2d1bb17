import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { skipBecause } from '../../harness/report/skip.js';
import { compileFormat, conversionsOf, defaultTraceEventsPath, parseEventLine, TraceFormats, type EventFormat } from '../../harness/trace/formats.js';
import { repoRoot } from '../../harness/util/paths.js';

const FIX = join(repoRoot, 'tests', 'fixtures', 'trace');

function event(line: string): EventFormat {
  const e = parseEventLine(line, 1);
  if (e === null || 'message' in e) throw new Error(`did not parse: ${JSON.stringify(e)}`);
  return e;
}

describe('trace formats: the reference QEMU trace-events-all', function () {
  let text: string;
  before(function () {
    const path = defaultTraceEventsPath();
    if (!existsSync(path)) skipBecause(this, `reference QEMU not installed: ${path} missing (scripts/install-qemu.sh)`);
    text = readFileSync(path, 'utf8');
  });

  it('parses every event line and compiles every format', async function () {
    const formats = await TraceFormats.load();
    // Counted independently: every line that is neither blank nor a comment is one event.
    const eventLines = text.split('\n').filter((l) => l.trim() !== '' && !l.trim().startsWith('#')).length;
    expect(formats.errors).to.deep.equal([]);
    expect(formats.size).to.equal(eventLines);
    expect(formats.size).to.be.greaterThan(1000);
    const { compiled, failed } = formats.compileAll();
    expect(failed).to.deep.equal([]);
    expect(compiled).to.equal(eventLines);
  });

  it('knows the iommufd events of facts section 5 with the field names tests rely on', async function () {
    const formats = await TraceFormats.load();
    const fields = (n: string) => formats.matcher(n)?.fields;
    expect(fields('iommufd_backend_alloc_hwpt')).to.deep.equal([
      'iommufd', 'dev_id', 'pt_id', 'flags', 'hwpt_type', 'len', 'data_ptr', 'out_hwpt', 'ret',
    ]);
    expect(fields('iommufd_cdev_pasid_attach_ioas_hwpt')).to.deep.equal(['iommufd', 'name', 'devfd', 'pasid', 'id']);
    expect(fields('iommufd_backend_free_id')).to.deep.equal(['iommufd', 'id', 'ret']);
    expect(fields('vtd_device_attach_hwpt')).to.deep.equal(['dev_id', 'pasid', 'hwpt_id', 'ret']);
    expect(fields('iommufd_backend_set_dirty')).to.deep.equal(['iommufd', 'hwpt', 'enable', 'ret']);
  });
});

describe('trace formats: parsing trace-events lines', function () {
  it('reads the checked-in 11.1.3 excerpt without errors', function () {
    const text = readFileSync(join(FIX, 'trace-events-11.1.3-excerpt'), 'utf8');
    const f = TraceFormats.fromText(text, 'excerpt');
    expect(f.errors).to.deep.equal([]);
    expect(f.size).to.equal(text.split('\n').filter((l) => /^[a-z]/.test(l)).length);
    expect(f.compileAll().failed).to.deep.equal([]);
  });

  it('expands PRI macros written with and without spaces around them', function () {
    const e = event('vtd_iotlb_cc_update(uint8_t bus, uint8_t devfn, uint64_t high, uint64_t low, uint32_t gen1, uint32_t gen2) "IOTLB context update bus 0x%"PRIx8" devfn 0x%" PRIx8 " high 0x%"PRIx64" low 0x%"PRIx64" gen %"PRIu32" -> gen %"PRIu32');
    expect(e.format).to.equal('IOTLB context update bus 0x%x devfn 0x%x high 0x%llx low 0x%llx gen %u -> gen %u');
    expect(e.conversions.map((c) => c.field)).to.deep.equal(['bus', 'devfn', 'high', 'low', 'gen1', 'gen2']);
  });

  it('names fields from `name=`/`name:`, a trailing `(%d)` as ret, else from the C arguments', function () {
    const e = event('iommufd_backend_set_dirty(int iommufd, uint32_t hwpt_id, bool start, int ret) " iommufd=%d hwpt=%u enable=%d (%d)"');
    expect(e.conversions.map((c) => c.field)).to.deep.equal(['iommufd', 'hwpt', 'enable', 'ret']);
    const c = event('iommufd_cdev_connect_and_bind(int iommufd, const char *name, int devfd, int devid) " [iommufd=%d] Successfully bound device %s (fd=%d): output devid=%d"');
    expect(c.conversions.map((x) => x.field)).to.deep.equal(['iommufd', 'name', 'fd', 'devid']);
    // A `(%d)` that is not at the end is an ordinary argument.
    const a = event('iommufd_cdev_pasid_attach_ioas_hwpt(int iommufd, const char *name, int devfd, uint32_t pasid, int id) " [iommufd=%d] Successfully attached device %s (%d) pasid %u to id=%d"');
    expect(a.conversions.map((x) => x.field)).to.deep.equal(['iommufd', 'name', 'devfd', 'pasid', 'id']);
    expect(event('iommufd_change_process(int fd, bool ret) "fd=%d (%d)"').conversions.map((x) => x.field)).to.deep.equal(['fd', 'ret']);
  });

  it('keeps field names unique when the text repeats a name', function () {
    const convs = conversionsOf('a=%d a=%d', ['first', 'second']);
    expect(convs.map((c) => c.field)).to.deep.equal(['a', 'second']);
    expect(conversionsOf('x=%d x=%d', ['x', 'x']).map((c) => c.field)).to.deep.equal(['x', 'x_1']);
  });

  it('lets a star width consume its C argument', function () {
    const e = event('pflash_sector_erase_start(const char *name, int width1, uint64_t start, int width2, uint64_t end) "%s: start sector erase at: 0x%0*" PRIx64 "-0x%0*" PRIx64');
    expect(e.conversions.map((c) => [c.field, c.argIndex])).to.deep.equal([['name', 0], ['at', 2], ['end', 4]]);
    const m = compileFormat(e.format, e.conversions);
    expect(m.regex.exec('cfi.pflash01: start sector erase at: 0x0000f000-0x0000ffff')?.slice(1)).to.deep.equal(['cfi.pflash01', '0000f000', '0000ffff']);
  });

  it('treats %% as a literal and resolves C escapes', function () {
    const e = event(`led_change_intensity(const char *color, const char *desc, uint8_t old_intensity_percent, uint8_t new_intensity_percent) "LED desc:'%s' color:%s intensity %u%% -> %u%%"`);
    expect(e.conversions).to.have.length(4);
    expect(compileFormat(e.format, e.conversions).regex.test("LED desc:'power' color:green intensity 0% -> 100%")).to.equal(true);
    const t = event('iommufd_cdev_pci_hot_reset_dep_devices(int domain, int bus, int slot, int function, int dev_id) "\\t%04x:%02x:%02x.%x devid %d"');
    expect(t.format.startsWith('\t')).to.equal(true);
  });

  it('records properties, events without a format, and old tcg/vcpu forms', function () {
    const d = event('disable qxl_io_write_vga(int qid, const char *mode, uint32_t addr, uint32_t val) "%d %s addr=%u val=%u"');
    expect(d.props).to.deep.equal(['disable']);
    const v = event('dbus_vmstate_pre_save(void)');
    expect(v.format).to.equal('');
    expect(v.args).to.deep.equal([]);
    const tcg = event('tcg guest_mem_before(TCGv vaddr, uint16_t info) "info=%d", "vaddr=0x%016"PRIx64" info=%d"');
    expect(tcg.format).to.equal('vaddr=0x%016llx info=%d');
    const cpu = event('vcpu guest_cpu_enter(void) ""');
    expect(cpu.format).to.equal('cpu=%p ');
    expect(cpu.conversions.map((c) => c.field)).to.deep.equal(['cpu']);
  });

  it('reports a malformed line with its line number instead of guessing', function () {
    const f = TraceFormats.fromText('# c\n\ngood_event(int a) "a=%d"\nbad_event(int a) "a=%d" PRIq99\nnot an event\n');
    expect(f.size).to.equal(1);
    expect(f.errors.map((e) => e.line)).to.deep.equal([4, 5]);
    expect(f.errors[0]!.message).to.match(/bad_event: unknown macro PRIq99/);
  });

  it('turns a renamed event of an older build into just another entry', function () {
    const f = TraceFormats.fromText(readFileSync(join(FIX, 'trace-events-old-attach'), 'utf8'));
    expect(f.has('iommufd_cdev_attach_ioas_hwpt')).to.equal(true);
    expect(f.has('iommufd_cdev_pasid_attach_ioas_hwpt')).to.equal(false);
    expect(f.matcher('iommufd_cdev_attach_ioas_hwpt')?.fields).to.deep.equal(['iommufd', 'name', 'devfd', 'id']);
  });
});
