import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceDescriptionError, MAX_DESCRIPTION_BYTES, validateDeviceDescription, type DeviceDescription } from '../../harness/vfio-user/description.js';
import {
  CONFIG_SPACE_SIZE,
  CapId,
  DEVCAP2_EE_TLP_PREFIX,
  DEVCAP2_EXT_FMT_FIELD,
  DEVCAP_FLR,
  DEVCTL_INITIATE_FLR,
  DeviceModel,
  Exp,
  ExtCapId,
  PciIrq,
  PciRegion,
  PMCSR_NO_SOFT_RESET,
  PM_CTRL,
  Reg,
  RegionAccessError,
  STATUS_IMMEDIATE_READINESS,
} from '../../harness/vfio-user/device-model.js';
import { deviceDescriptions, loadDeviceDescription, pasidEndpoint, pasidNoTlpPrefix, plainEndpoint } from '../../harness/vfio-user/devices/index.js';

const CFG = PciRegion.CONFIG;

function u16(m: DeviceModel, at: number): number {
  return m.read(CFG, at, 2).readUInt16LE(0);
}
function u32(m: DeviceModel, at: number): number {
  return m.read(CFG, at, 4).readUInt32LE(0);
}
function w16(m: DeviceModel, at: number, v: number): void {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  m.write(CFG, at, b);
}
function w32(m: DeviceModel, at: number, v: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  m.write(CFG, at, b);
}

/** Walks the capability list the way Linux does: from 0x34, following next pointers. */
function walkCaps(m: DeviceModel): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let at = m.read(CFG, Reg.CAPABILITY_LIST, 1)[0]!; at !== 0 && out.length < 48; at = m.read(CFG, at + 1, 1)[0]!) {
    out.push([m.read(CFG, at, 1)[0]!, at]);
  }
  return out;
}

/** Walks extended capabilities from 0x100. */
function walkExtCaps(m: DeviceModel): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  for (let at = 0x100; at !== 0 && out.length < 96; ) {
    const h = u32(m, at);
    if (h === 0) break;
    out.push([h & 0xffff, (h >>> 16) & 0xf, at]);
    at = h >>> 20;
  }
  return out;
}

describe('vfio-user device model', () => {
  describe('pasid-endpoint config space', () => {
    const m = new DeviceModel(pasidEndpoint);

    it('has the standard type-0 header from the description', () => {
      expect(u16(m, Reg.VENDOR_ID)).to.equal(0x7e57);
      expect(u16(m, Reg.DEVICE_ID)).to.equal(0x0002);
      expect(m.read(CFG, Reg.REVISION, 4).readUInt32LE(0)).to.equal(0xff000001);
      expect(m.read(CFG, Reg.HEADER_TYPE, 1)[0]).to.equal(0);
      expect(u16(m, Reg.STATUS) & 0x10, 'capability list bit').to.equal(0x10);
      expect(u16(m, Reg.SUBSYSTEM_VENDOR_ID)).to.equal(0x7e57);
      expect(m.read(CFG, Reg.INTERRUPT_PIN, 1)[0], 'no INTx').to.equal(0);
    });

    it('chains PM and PCI Express capabilities from 0x40', () => {
      expect(walkCaps(m)).to.deep.equal([
        [CapId.PM, 0x40],
        [CapId.EXP, 0x48],
      ]);
      const exp = 0x48;
      expect(u16(m, exp + Exp.FLAGS) & 0xf, 'capability version').to.equal(2);
      expect((u16(m, exp + Exp.FLAGS) >> 4) & 0xf, 'PCI Express Endpoint').to.equal(0);
      const devcap2 = u32(m, exp + Exp.DEVCAP2);
      expect(devcap2 & DEVCAP2_EXT_FMT_FIELD, 'DevCap2 bit 20').to.not.equal(0);
      expect(devcap2 & DEVCAP2_EE_TLP_PREFIX, 'DevCap2 bit 21').to.not.equal(0);
    });

    it('chains PASID, ATS and PRI from 0x100 with their capability bits', () => {
      expect(walkExtCaps(m)).to.deep.equal([
        [ExtCapId.PASID, 1, 0x100],
        [ExtCapId.ATS, 1, 0x108],
        [ExtCapId.PRI, 1, 0x110],
      ]);
      const pasidCap = u16(m, 0x104);
      expect((pasidCap >> 8) & 0x1f, 'Max PASID Width').to.equal(20);
      expect(pasidCap & 0x6, 'exec + priv supported').to.equal(0x6);
      expect(u16(m, 0x116) & 0x0100, 'PRI Stopped').to.equal(0x0100);
      expect(u16(m, 0x116) & 0x8000, 'PRG Response PASID Required').to.equal(0x8000);
      expect(u32(m, 0x118), 'outstanding page request capacity').to.equal(512);
      // The rest of extended config space is zero, up to the last byte.
      expect(m.read(CFG, 0x120, CONFIG_SPACE_SIZE - 0x120).every((b) => b === 0)).to.equal(true);
    });
  });

  describe('writes go through per-byte masks', () => {
    it('sizes BARs: all-ones reads back the size mask and the type bits', () => {
      const m = new DeviceModel(pasidEndpoint);
      w32(m, Reg.BAR0, 0xffffffff);
      expect(u32(m, Reg.BAR0), '32-bit 16 KiB BAR0').to.equal(0xffffc000);
      w32(m, Reg.BAR0 + 8, 0xffffffff);
      w32(m, Reg.BAR0 + 12, 0xffffffff);
      expect(u32(m, Reg.BAR0 + 8), '64-bit prefetchable 1 MiB BAR2, low').to.equal(0xfff0000c);
      expect(u32(m, Reg.BAR0 + 12), 'BAR2, high').to.equal(0xffffffff);
      w32(m, Reg.BAR0 + 4, 0xffffffff);
      expect(u32(m, Reg.BAR0 + 4), 'unimplemented BAR1').to.equal(0);
      w32(m, Reg.BAR0, 0xfe001234);
      expect(u32(m, Reg.BAR0), 'an address keeps only bits above the size').to.equal(0xfe000000);
    });

    it('sizes a 64-bit BAR larger than 4 GiB through its high dword', () => {
      const m = new DeviceModel({ ...plainEndpoint, bars: [{ index: 0, size: 2 ** 34, is64: true }] });
      w32(m, Reg.BAR0, 0xffffffff);
      w32(m, Reg.BAR0 + 4, 0xffffffff);
      expect(u32(m, Reg.BAR0)).to.equal(0x00000004);
      expect(u32(m, Reg.BAR0 + 4)).to.equal(0xfffffffc);
    });

    it('reads the expansion ROM register back as 0 after all-ones', () => {
      const m = new DeviceModel(pasidEndpoint);
      w32(m, Reg.ROM_ADDRESS, 0xffffffff);
      expect(u32(m, Reg.ROM_ADDRESS)).to.equal(0);
      expect(m.regionInfo(PciRegion.ROM)).to.include({ size: 0, flags: 0 });
    });

    it('lets only the command bits this device has change, and ignores read-only identity', () => {
      const m = new DeviceModel(pasidEndpoint);
      w16(m, Reg.COMMAND, 0xffff);
      expect(u16(m, Reg.COMMAND)).to.equal(0x0546);
      w32(m, Reg.VENDOR_ID, 0x12345678);
      expect(u32(m, Reg.VENDOR_ID)).to.equal(0x00027e57);
      w16(m, Reg.STATUS, 0xffff);
      expect(u16(m, Reg.STATUS), 'RW1C error bits clear, capability and immediate readiness bits stay').to.equal(0x0011);
    });

    it('enables PASID with exec and priv, ATS and PRI through their control registers', () => {
      const m = new DeviceModel(pasidEndpoint);
      w16(m, 0x106, 0xffff);
      expect(u16(m, 0x106), 'PASID enable + exec + priv').to.equal(0x0007);
      w16(m, 0x10e, 0xffff);
      expect(u16(m, 0x10e), 'ATS enable + STU').to.equal(0x801f);
      w16(m, 0x114, 0x0003);
      expect(u16(m, 0x114), 'PRI enable; reset reads 0').to.equal(0x0001);
      w32(m, 0x11c, 64);
      expect(u32(m, 0x11c), 'outstanding page request allocation').to.equal(64);
      w32(m, 0x118, 1);
      expect(u32(m, 0x118), 'capacity is read-only').to.equal(512);
    });

    it('keeps PASID exec and priv enables read-only when not supported', () => {
      const m = new DeviceModel({ ...pasidEndpoint, pasid: { widthBits: 8, exec: false, priv: true } });
      w16(m, 0x106, 0xffff);
      expect(u16(m, 0x106)).to.equal(0x0005);
      expect((u16(m, 0x104) >> 8) & 0x1f).to.equal(8);
    });

    it('accepts D3hot and back but ignores D1 and D2', () => {
      const m = new DeviceModel(pasidEndpoint);
      w16(m, 0x44, 0x0003);
      expect(u16(m, 0x44) & 3).to.equal(3);
      w16(m, 0x44, 0x0001);
      expect(u16(m, 0x44) & 3, 'D1 ignored').to.equal(3);
      w16(m, 0x44, 0x0000);
      expect(u16(m, 0x44)).to.equal(0x0000);
    });

    it('writes any width at any offset, byte by byte', () => {
      const m = new DeviceModel(pasidEndpoint);
      m.write(CFG, 0x105, Buffer.from([0xff, 0xff, 0xff]));
      expect(u16(m, 0x104), 'PASID capability register is read-only').to.equal(0x1406);
      expect(u16(m, 0x106)).to.equal(0x0007);
    });
  });

  it('restores defaults on reset, BAR memory included', () => {
    const m = new DeviceModel(pasidEndpoint);
    const pristine = Buffer.from(m.config);
    w16(m, 0x106, 0x0001);
    w32(m, Reg.BAR0, 0xfe000000);
    w16(m, Reg.COMMAND, 0x0006);
    m.write(2, 0x1234, Buffer.from('hello'));
    expect(m.read(2, 0x1234, 5).toString()).to.equal('hello');
    m.reset();
    expect(m.config.equals(pristine)).to.equal(true);
    expect(m.read(2, 0x1234, 5).equals(Buffer.alloc(5))).to.equal(true);
    expect(m.resetCount).to.equal(1);
  });

  describe('function-level resets', () => {
    const exp = 0x48;
    const pmcsr = 0x44;
    /** Device state a driver leaves behind: BAR address, command, PASID/ATS enables, MPS 256, a link control bit, BAR data. */
    function dirty(m: DeviceModel): void {
      w32(m, Reg.BAR0, 0xfe000000);
      w16(m, Reg.COMMAND, 0x0006);
      w16(m, 0x106, 0x0007);
      w16(m, 0x10e, 0x8000);
      w16(m, exp + Exp.DEVCTL, 0x2830);
      w16(m, exp + Exp.LNKCTL, 0x0040);
      m.write(2, 0x1234, Buffer.from('hello'));
    }

    it('advertises FLR, PM soft reset and immediate readiness on every built-in device', () => {
      for (const d of Object.values(deviceDescriptions)) {
        const m = new DeviceModel(d);
        const e = m.findCapability(CapId.EXP)!.offset;
        const pm = m.findCapability(CapId.PM)!.offset;
        expect(u32(m, e + Exp.DEVCAP) & DEVCAP_FLR, `${d.name}: DevCap Function Level Reset`).to.equal(DEVCAP_FLR);
        expect(u16(m, pm + PM_CTRL) & PMCSR_NO_SOFT_RESET, `${d.name}: No_Soft_Reset`).to.equal(0);
        expect(u16(m, Reg.STATUS) & STATUS_IMMEDIATE_READINESS, `${d.name}: Immediate Readiness`).to.equal(1);
      }
    });

    it('resets the function on Initiate FLR, keeping Max_Payload_Size and Link Control', () => {
      const m = new DeviceModel(pasidEndpoint);
      const pristine = Buffer.from(m.config);
      dirty(m);
      // pcie_capability_set_word: read DevCtl, OR in bit 15, write the word back.
      w16(m, exp + Exp.DEVCTL, u16(m, exp + Exp.DEVCTL) | DEVCTL_INITIATE_FLR);
      expect(m.resets).to.deep.equal({ device: 0, flr: 1, pm: 0 });
      expect(u16(m, exp + Exp.DEVCTL), 'Initiate FLR reads 0; MPS 256 stays, the rest is default').to.equal((0x2810 & ~0xe0) | 0x20);
      expect(u16(m, exp + Exp.LNKCTL), 'Link Control stays').to.equal(0x0040);
      expect(u32(m, Reg.BAR0)).to.equal(0);
      expect(u16(m, Reg.COMMAND)).to.equal(0);
      expect(u16(m, 0x106), 'PASID control').to.equal(0);
      expect(u16(m, 0x10e), 'ATS control').to.equal(0);
      expect(m.read(2, 0x1234, 5).equals(Buffer.alloc(5)), 'BAR memory').to.equal(true);
      const diff = [...m.config].flatMap((b, i) => (b === pristine[i] ? [] : [i]));
      expect(diff, 'only DevCtl MPS and LnkCtl differ from power-on').to.deep.equal([exp + Exp.DEVCTL, exp + Exp.LNKCTL]);
    });

    it('acts on Initiate FLR in a one-byte write of DevCtl\'s high byte, and ignores it without FLR', () => {
      const m = new DeviceModel(pasidEndpoint);
      dirty(m);
      m.write(CFG, exp + Exp.DEVCTL + 1, Buffer.from([0x80]));
      expect(m.resets.flr).to.equal(1);
      expect(u16(m, Reg.COMMAND)).to.equal(0);

      const noFlr = new DeviceModel({ ...pasidEndpoint, reset: { flr: false, pmSoftReset: true, immediateReadiness: true } });
      expect(u32(noFlr, exp + Exp.DEVCAP) & DEVCAP_FLR).to.equal(0);
      dirty(noFlr);
      w16(noFlr, exp + Exp.DEVCTL, 0xa830);
      expect(noFlr.resets.flr).to.equal(0);
      expect(u16(noFlr, Reg.COMMAND), 'state stays').to.equal(0x0006);
      expect(u16(noFlr, exp + Exp.DEVCTL), 'bit 15 is not stored').to.equal(0x2830);
    });

    it('resets the function on D3hot→D0 with No_Soft_Reset clear, and only then', () => {
      const m = new DeviceModel(pasidEndpoint);
      const pristine = Buffer.from(m.config);
      dirty(m);
      w16(m, pmcsr, 0x0000);
      expect(m.resets.pm, 'D0→D0').to.equal(0);
      w16(m, pmcsr, 0x0003);
      expect(m.powerState).to.equal(3);
      w16(m, pmcsr, 0x0003);
      expect(m.resets.pm, 'D3hot→D3hot').to.equal(0);
      expect(u16(m, Reg.COMMAND), 'state kept in D3hot').to.equal(0x0006);
      w16(m, pmcsr, 0x0000);
      expect(m.resets).to.deep.equal({ device: 0, flr: 0, pm: 1 });
      expect(m.powerState).to.equal(0);
      expect(m.config.equals(pristine), 'config is back to power-on, Link Control included').to.equal(true);
      expect(m.read(2, 0x1234, 5).equals(Buffer.alloc(5))).to.equal(true);
    });

    it('keeps all state across D3hot→D0 with No_Soft_Reset set', () => {
      const m = new DeviceModel({ ...pasidEndpoint, reset: { flr: true, pmSoftReset: false, immediateReadiness: false } });
      expect(u16(m, pmcsr)).to.equal(PMCSR_NO_SOFT_RESET);
      expect(u16(m, Reg.STATUS) & STATUS_IMMEDIATE_READINESS).to.equal(0);
      dirty(m);
      w16(m, pmcsr, 0x0003);
      w16(m, pmcsr, 0x0000);
      expect(m.resets.pm).to.equal(0);
      expect(u16(m, pmcsr)).to.equal(PMCSR_NO_SOFT_RESET);
      expect(u16(m, Reg.COMMAND)).to.equal(0x0006);
      expect(u16(m, 0x106)).to.equal(0x0007);
      expect(m.read(2, 0x1234, 5).toString()).to.equal('hello');
    });

    it('keeps DEVICE_RESET a full power-on reset, counted apart', () => {
      const m = new DeviceModel(pasidEndpoint);
      const pristine = Buffer.from(m.config);
      dirty(m);
      m.reset();
      expect(m.config.equals(pristine)).to.equal(true);
      expect(m.resets).to.deep.equal({ device: 1, flr: 0, pm: 0 });
    });
  });

  it('backs BARs with memory across page boundaries and refuses accesses outside regions', () => {
    const m = new DeviceModel(pasidEndpoint);
    const data = Buffer.from(Array.from({ length: 6000 }, (_, i) => i & 0xff));
    m.write(0, 100, data);
    expect(m.read(0, 100, 6000).equals(data)).to.equal(true);
    expect(m.read(0, 0, 100).every((b) => b === 0)).to.equal(true);
    expect(() => m.read(0, 0x4000 - 2, 4)).to.throw(RegionAccessError, /outside region 0 \(16384 bytes\)/);
    expect(() => m.read(1, 0, 4)).to.throw(RegionAccessError, /region 1, which this device does not have/);
    expect(() => m.read(CFG, 4095, 2)).to.throw(RegionAccessError, /outside region 7/);
    expect(() => m.write(PciRegion.VGA, 0, Buffer.alloc(1))).to.throw(RegionAccessError);
    expect(() => m.read(CFG, Infinity, 1)).to.throw(RegionAccessError);
  });

  it('describes nine regions and five IRQ indexes as Linux vfio-pci does', () => {
    const m = new DeviceModel(pasidEndpoint);
    expect(m.regionInfo(CFG)).to.deep.equal({ index: 7, flags: 3, size: 4096, offset: 0 });
    expect(m.regionInfo(0)).to.deep.include({ size: 0x4000, flags: 3 });
    expect(m.regionInfo(2)).to.deep.include({ size: 0x100000 });
    expect(m.regionInfo(3)).to.deep.include({ size: 0, flags: 0 });
    expect(m.regionInfo(PciRegion.VGA)).to.deep.include({ size: 0 });
    expect(m.regionInfo(9)).to.equal(undefined);
    expect(m.irqInfo(PciIrq.INTX)?.count).to.equal(0);
    expect(m.irqInfo(PciIrq.MSI)?.count).to.equal(0);
    expect(m.irqInfo(PciIrq.ERR)?.count).to.equal(1);
    expect(m.irqInfo(5)).to.equal(undefined);
    expect(new DeviceModel({ ...plainEndpoint, msi: true }).irqInfo(PciIrq.MSI)?.count).to.equal(1);
  });

  it('plain-endpoint has no extended capabilities and pasid-no-tlp-prefix lacks DevCap2 bits 20/21', () => {
    const plain = new DeviceModel(plainEndpoint);
    expect(u32(plain, 0x100)).to.equal(0);
    expect(walkExtCaps(plain)).to.deep.equal([]);
    const noPrefix = new DeviceModel(pasidNoTlpPrefix);
    expect(walkExtCaps(noPrefix).map(([id]) => id)).to.include(ExtCapId.PASID);
    const exp = noPrefix.findCapability(CapId.EXP)!.offset;
    expect(u32(noPrefix, exp + Exp.DEVCAP2) & (DEVCAP2_EXT_FMT_FIELD | DEVCAP2_EE_TLP_PREFIX)).to.equal(0);
  });

  it('places MSI between PM and PCI Express when asked for', () => {
    const m = new DeviceModel({ ...plainEndpoint, msi: true });
    expect(walkCaps(m)).to.deep.equal([
      [CapId.PM, 0x40],
      [CapId.MSI, 0x48],
      [CapId.EXP, 0x58],
    ]);
    w16(m, 0x4a, 0xffff);
    expect(u16(m, 0x4a), 'MSI enable writable, 64-bit bit read-only').to.equal(0x0081);
  });

  describe('descriptions', () => {
    it('validates every built-in description', () => {
      for (const [name, d] of Object.entries(deviceDescriptions)) {
        expect(validateDeviceDescription(d).name).to.equal(name);
        expect(loadDeviceDescription(name)).to.deep.equal(validateDeviceDescription(d));
      }
      expect(Object.keys(deviceDescriptions)).to.include.members(['pasid-endpoint', 'plain-endpoint', 'pasid-no-tlp-prefix']);
    });

    const bad: Array<[string, (d: Record<string, unknown>) => void, RegExp]> = [
      ['a PASID width above 20', (d) => (d.pasid = { widthBits: 21, exec: true, priv: true }), /pasid\.widthBits must be an integer in 1\.\.20, got 21/],
      ['a misspelt field', (d) => (d.pasdi = {}), /pasdi is not a known field/],
      ['a BAR size that is no power of two', (d) => (d.bars = [{ index: 0, size: 3000 }]), /bars\[0\]\.size must be a power of two, got 3000/],
      ['overlapping BARs', (d) => (d.bars = [{ index: 0, size: 4096, is64: true }, { index: 1, size: 4096 }]), /bars\[1\]\.index BAR 1 is already taken/],
      ['a 64-bit BAR at index 5', (d) => (d.bars = [{ index: 5, size: 4096, is64: true }]), /bars\[0\]\.index must be an integer in 0\.\.4/],
      ['a vendor id of 0xffff', (d) => (d.vendorId = 0xffff), /vendorId must be an integer in 0\.\.0xfffe, got 65535 \(0xffff\)/],
      ['a bridge class', (d) => (d.classCode = 0x060400), /classCode 0x60400 is a bridge class/],
      ['end-end prefix without extended fmt', (d) => (d.pcie = { extendedFmtField: false, endEndTlpPrefix: true }), /pcie\.endEndTlpPrefix needs pcie\.extendedFmtField/],
      ['PRI without ATS', (d) => delete d.ats, /^device description "pasid-endpoint": pri needs ats/],
      ['a missing pm', (d) => delete d.pm, /pm must be true or false, got nothing/],
      ['a name with spaces', (d) => (d.name = 'my device'), /name must be lower-case letters/],
      ['PM soft reset without PM', (d) => (d.pm = false), /reset\.pmSoftReset needs pm/],
      ['a misspelt reset field', (d) => (d.reset = { flr: true, pmSoftReset: true, immediateReadyness: true }), /reset\.immediateReadyness is not a known field/],
      ['a reset flag that is no boolean', (d) => (d.reset = { flr: 1, pmSoftReset: true, immediateReadiness: true }), /reset\.flr must be true or false, got 1/],
      ['a reset missing a flag', (d) => (d.reset = { flr: true, pmSoftReset: true }), /reset\.immediateReadiness must be true or false, got nothing/],
    ];
    for (const [what, mutate, message] of bad) {
      it(`refuses ${what}, naming the field`, () => {
        const d = structuredClone(pasidEndpoint) as unknown as Record<string, unknown>;
        mutate(d);
        expect(() => validateDeviceDescription(d)).to.throw(DeviceDescriptionError, message);
      });
    }

    it('gives a description without reset FLR, immediate readiness and a PM soft reset if it has PM', () => {
      const { reset: _, ...withoutReset } = plainEndpoint;
      expect(validateDeviceDescription(withoutReset).reset).to.deep.equal({ flr: true, pmSoftReset: true, immediateReadiness: true });
      expect(validateDeviceDescription({ ...withoutReset, pm: false }).reset).to.deep.equal({ flr: true, pmSoftReset: false, immediateReadiness: true });
      const noPm = new DeviceModel({ ...withoutReset, pm: false });
      expect(noPm.findCapability(CapId.PM)).to.equal(undefined);
      expect(noPm.powerState).to.equal(0);
    });

    it('loads a description from a JSON file and names the file on a parse error', () => {
      const dir = mkdtempSync(join(tmpdir(), 'vfio-user-desc-'));
      const good: DeviceDescription = { ...plainEndpoint, name: 'from-file', deviceId: 0x42 };
      writeFileSync(join(dir, 'good.json'), JSON.stringify(good));
      expect(loadDeviceDescription(join(dir, 'good.json'))).to.deep.equal({ ...good, bars: good.bars.map((b) => ({ prefetchable: false, is64: false, ...b })) });
      writeFileSync(join(dir, 'bad.json'), '{"name": ');
      expect(() => loadDeviceDescription(join(dir, 'bad.json'))).to.throw(/bad\.json/);
      expect(() => loadDeviceDescription('no-such-device')).to.throw(/no built-in device description "no-such-device" \(known: pasid-endpoint/);
    });

    it('refuses a description file over 64 KiB with its size, and names the line of a bad field or a syntax error', () => {
      const dir = mkdtempSync(join(tmpdir(), 'vfio-user-desc-'));
      const big = join(dir, 'big.json');
      const bigText = JSON.stringify({ ...plainEndpoint, name: 'big', pad: 'x'.repeat(MAX_DESCRIPTION_BYTES) });
      writeFileSync(big, bigText);
      expect(() => loadDeviceDescription(big)).to.throw(DeviceDescriptionError, `${big}: device description: (file) the file is ${bigText.length} bytes; the limit is ${MAX_DESCRIPTION_BYTES} bytes (refused before parsing)`);
      const bad = join(dir, 'bad.json');
      writeFileSync(bad, JSON.stringify({ ...plainEndpoint, name: 'bad', bars: [{ index: 0, size: 0x4000 }, { index: 2, size: 1000 }] }, null, 2));
      expect(() => loadDeviceDescription(bad)).to.throw(DeviceDescriptionError, `${bad}: line 16: device description "bad": bars[1].size must be a power of two, got 1000`);
      const cut = join(dir, 'cut.json');
      writeFileSync(cut, '{\n  "name": "x",\n  "bars": [');
      expect(() => loadDeviceDescription(cut)).to.throw(DeviceDescriptionError, `${cut}: line 3: device description: (file) is not JSON at column 12: Unexpected end of JSON input`);
      const garbage = join(dir, 'garbage.json');
      writeFileSync(garbage, '"' + 'A'.repeat(60_000) + '"');
      expect(() => loadDeviceDescription(garbage)).to.throw(DeviceDescriptionError, /\(root\) must be an object, got "A+\.\.\. \(60002 characters\)$/);
      rmSync(dir, { recursive: true, force: true });
    });
  });
});
