import { ARCHES, findQemu, type Arch } from '../qemu/binary.js';
import { featureNames } from '../viommu/features.js';
import { probeQemu } from '../viommu/probe.js';
import { runCommandSpec, str, UsageError, type CommandSpec, type Io, type Parsed } from './options.js';

export const QEMU_INFO: CommandSpec = {
  name: 'qemu info',
  summary: 'The QEMU the harness would use for each arch: binary, where it came from, version, and the vIOMMU property names it offers.',
  options: {
    json: { type: 'boolean', help: 'JSON instead of text' },
    arch: { type: 'string', value: 'x86_64|aarch64', help: 'only this arch' },
    qemu: { type: 'string', value: 'PATH', help: 'this QEMU binary instead of the one the harness would find' },
  },
  epilogue: 'exit status: 0 printed, 1 the QEMU could not be probed, 128 bad usage',
};

/** `harness qemu info`: which QEMU runs, its version, and what its vIOMMUs call things. */
export function qemuInfoCommand(args: string[], io: Io = process): Promise<number> {
  return runCommandSpec(QEMU_INFO, args, qemuInfo, io);
}

async function qemuInfo({ values }: Parsed): Promise<number> {
  const flags = new Set(values.json ? ['json'] : []);
  const archOpt = str(values, 'arch');
  if (archOpt && !(ARCHES as readonly string[]).includes(archOpt)) throw new UsageError(`--arch must be one of ${ARCHES.join(', ')}, not ${archOpt}`);
  const arches: Arch[] = archOpt ? [archOpt as Arch] : [...ARCHES];
  const qemuPath = str(values, 'qemu');
  const out = [];
  for (const arch of arches) {
    const probe = await probeQemu(findQemu(arch, qemuPath ? { path: qemuPath } : {}));
    out.push({
      arch,
      binary: probe.binary.path,
      source: probe.binary.source,
      version: probe.version.text,
      // As numbers too, so a script can compare versions without parsing the text.
      versionNumbers: { major: probe.version.major, minor: probe.version.minor, micro: probe.version.micro },
      traceEventsAll: probe.binary.traceEventsAll ?? null,
      viommu: Object.fromEntries(
        Object.entries(probe.drivers).map(([driver, props]) => [
          driver,
          {
            // An absent feature is null, not left out: JSON drops undefined.
            features: Object.fromEntries(Object.entries(featureNames(driver, props)).map(([f, p]) => [f, p ?? null])),
            properties: Object.fromEntries(props.map((p) => [p.name, { type: p.type, default: p['default-value'] ?? null }])),
          },
        ]),
      ),
      devices: [...probe.features.devices].sort(),
      accelerators: [...probe.features.accels].sort(),
      objects: [...probe.features.objects].sort(),
      runWith: [...(probe.features.options.get('run-with') ?? [])].sort(),
    });
  }
  if (flags.has('json')) {
    console.log(JSON.stringify(archOpt ? out[0] : out, null, 2));
    return 0;
  }
  for (const o of out) {
    console.log(`${o.arch}: ${o.binary} (${o.source})\n  ${o.version}`);
    for (const [driver, v] of Object.entries(o.viommu)) {
      const names = Object.entries(v.features)
        .map(([f, p]) => `${f}=${p ?? '(absent)'}`)
        .join(' ');
      console.log(`  ${driver}: ${names}`);
    }
  }
  return 0;
}
