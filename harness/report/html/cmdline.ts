/**
 * What a machine folder's cmdline.txt says about the QEMU that ran: which
 * binary, which accelerator, which vIOMMU with which features, which host
 * devices. machine.ts writes the argv shell-quoted on one line; a report is
 * built from that text alone (no QEMU needs to be there any more).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ViommuConfig } from '../../trace/oracle.js';
import { FEATURES_BY_DRIVER } from '../../viommu/features.js';

/** POSIX shell words: single quotes, double quotes, backslashes (what machine.ts's quoting writes). */
export function shellWords(text: string): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new Error(`cmdline: unterminated single quote at offset ${i}`);
      cur += text.slice(i + 1, end);
      i = end;
      inWord = true;
    } else if (c === '"') {
      i++;
      for (; i < text.length && text[i] !== '"'; i++) {
        if (text[i] === '\\' && i + 1 < text.length && '"\\$`'.includes(text[i + 1]!)) i++;
        cur += text[i];
      }
      if (i >= text.length) throw new Error('cmdline: unterminated double quote');
      inWord = true;
    } else if (c === '\\' && i + 1 < text.length) {
      cur += text[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

export type DeviceArgs = { driver: string } & Record<string, unknown>;

/** A -device argument in JSON or key=value form (`,,` is an escaped comma). */
export function deviceArgs(arg: string): DeviceArgs {
  if (arg.startsWith('{')) {
    const v = JSON.parse(arg) as Record<string, unknown>;
    if (typeof v.driver !== 'string') throw new Error(`-device ${arg}: no "driver"`);
    return v as DeviceArgs;
  }
  const parts = arg.split(/,(?!,)/).map((p) => p.replaceAll(',,', ','));
  const out: Record<string, unknown> = {};
  parts.forEach((p, i) => {
    const eq = p.indexOf('=');
    if (eq < 0) out[i === 0 ? 'driver' : p] = i === 0 ? p : 'on';
    else out[p.slice(0, eq)] = p.slice(eq + 1);
  });
  if (typeof out.driver !== 'string') throw new Error(`-device ${arg}: no driver`);
  return out as DeviceArgs;
}

export interface QemuCmdline {
  /** The qemu-system-* path (after a loader and its options, when run through one). */
  binary?: string;
  arch?: string;
  /** -accel, or -machine ...,accel= (QEMU's default is tcg when neither is given). */
  accel: string[];
  machine?: string;
  devices: DeviceArgs[];
  traceFile?: string;
  /** -msg timestamp=on: trace and error lines carry ISO times. */
  timestamps: boolean;
}

export function parseCmdline(text: string): QemuCmdline {
  const w = shellWords(text.trim());
  const binary = w.find((x) => /(^|\/)qemu-system-[\w-]+$/.test(x));
  const out: QemuCmdline = { accel: [], devices: [], timestamps: false };
  if (binary) {
    out.binary = binary;
    out.arch = /qemu-system-([\w-]+)$/.exec(binary)![1]!;
  }
  for (let i = binary ? w.indexOf(binary) + 1 : 0; i < w.length; i++) {
    const opt = w[i]!;
    const val = w[i + 1] ?? '';
    switch (opt) {
      case '-accel':
        out.accel.push(val.split(',')[0]!);
        break;
      case '-machine': {
        out.machine = val.split(',')[0]!;
        const a = /(?:^|,)accel=([^,]+)/.exec(val);
        if (a) out.accel.push(...a[1]!.split(':'));
        break;
      }
      case '-device':
        try {
          out.devices.push(deviceArgs(val));
        } catch {
          /* a device the report need not understand */
        }
        break;
      case '-trace': {
        const f = /(?:^|,)file=([^,]+)/.exec(val);
        if (f) out.traceFile = f[1]!;
        break;
      }
      case '-msg':
        if (/timestamp=on/.test(val)) out.timestamps = true;
        break;
      default:
        continue;
    }
    i++;
  }
  return out;
}

const truthy = (v: unknown): boolean => v === true || v === 'on' || v === 'true' || v === 'yes' || v === 1 || v === '1';

/**
 * The oracle's vIOMMU from the -device arguments, whatever this QEMU calls its
 * properties (harness/viommu/features.ts spellings). A 10.0-style boolean
 * PASID switch gives pasidBits 1: only "> 0" matters to the flags.
 */
export function viommuOf(devices: readonly DeviceArgs[]): { config: ViommuConfig; device?: DeviceArgs; note?: string } {
  const d = devices.find((x) => x.driver === 'intel-iommu' || x.driver === 'arm-smmuv3');
  if (!d) return { config: { kind: 'none' } };
  const specs = FEATURES_BY_DRIVER[d.driver]!;
  const prop = (feature: string): { name: string; value: unknown } | undefined => {
    for (const s of specs[feature]?.spellings ?? []) if (s.property in d) return { name: s.property, value: d[s.property] };
    return undefined;
  };
  if (d.driver === 'intel-iommu') {
    const fsts = prop('fsts');
    const pasid = prop('pasidBits');
    let pasidBits = 0;
    let note: string | undefined;
    if (pasid) {
      if (typeof pasid.value === 'number' || /^\d+$/.test(String(pasid.value))) pasidBits = Number(pasid.value);
      else if (truthy(pasid.value)) {
        pasidBits = 1;
        note = `${pasid.name}=${String(pasid.value)} is a switch: PASID on at this QEMU's fixed width`;
      }
    }
    return { config: { kind: 'intel-iommu', fsts: fsts ? truthy(fsts.value) : false, pasidBits }, device: d, ...(note ? { note } : {}) };
  }
  const ssid = prop('ssidsize');
  const accel = prop('accel');
  const ssidsize = ssid === undefined || ssid.value === 'auto' ? 'auto' : Number(ssid.value);
  return { config: { kind: 'arm-smmuv3', accel: accel ? truthy(accel.value) : false, ssidsize }, device: d };
}

/** The host devices passed through (vfio-pci host=BDF), in command-line order. */
export function hostDevices(devices: readonly DeviceArgs[]): string[] {
  return devices.filter((d) => d.driver === 'vfio-pci' && typeof d.host === 'string').map((d) => normalBdf(d.host as string));
}

/** 05:00.0 → 0000:05:00.0 (the kernel's and the trace's spelling). */
export function normalBdf(bdf: string): string {
  return /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(bdf) ? `0000:${bdf}`.toLowerCase() : bdf.toLowerCase();
}

/** The build's trace-events-all, where binary.ts looks for it (a build tree, or PREFIX/share/qemu). */
export function traceEventsBeside(binary: string): string | undefined {
  const dir = dirname(binary);
  return [join(dir, 'trace-events-all'), join(dir, 'trace', 'trace-events-all'), join(dir, '..', 'share', 'qemu', 'trace-events-all')].find((p) => existsSync(p));
}
