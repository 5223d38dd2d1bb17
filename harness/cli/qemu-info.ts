import { ARCHES, findQemu, type Arch } from '../qemu/binary.js';
import { featureNames } from '../viommu/features.js';
import { probeQemu } from '../viommu/probe.js';
import { parseOptions } from './main.js';

/** `harness qemu info`: which QEMU runs, its version, and what its vIOMMUs call things. */
export async function qemuInfoCommand(args: string[]): Promise<number> {
  const { opts, flags } = parseOptions(args, { flags: ['json'], values: ['arch', 'qemu'] });
  const archOpt = opts.get('arch')?.at(-1);
  if (archOpt && !(ARCHES as readonly string[]).includes(archOpt)) throw new Error(`--arch must be one of ${ARCHES.join(', ')}, not ${archOpt}`);
  const arches: Arch[] = archOpt ? [archOpt as Arch] : [...ARCHES];
  const qemuPath = opts.get('qemu')?.at(-1);
  const out = [];
  for (const arch of arches) {
    const probe = await probeQemu(findQemu(arch, qemuPath ? { path: qemuPath } : {}));
    out.push({
      arch,
      binary: probe.binary.path,
      source: probe.binary.source,
      version: probe.version.text,
      traceEventsAll: probe.binary.traceEventsAll ?? null,
      viommu: Object.fromEntries(
        Object.entries(probe.drivers).map(([driver, props]) => [
          driver,
          {
            features: featureNames(driver, props),
            properties: Object.fromEntries(props.map((p) => [p.name, { type: p.type, default: p['default-value'] ?? null }])),
          },
        ]),
      ),
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
