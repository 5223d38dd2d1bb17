import { qemuInfoCommand } from './qemu-info.js';
import { runCommand } from './run.js';

const usage = `usage: harness <command> [options]

commands:
  run [--suite NAME]... [--grep TEXT] [--junit PATH] [--profile NAME|PATH]
      [--qemu-x86_64 PATH] [--qemu-aarch64 PATH]
        run the harness's suites (qemu, guest, virtual-lab, lab); exit 0 all ran tests
        passed, 1 a test failed, 125 nothing could run (for git bisect run)
  qemu info [--json] [--arch x86_64|aarch64] [--qemu PATH]
        the QEMU in use: binary, version, vIOMMU properties and their names
  trace decode FILE [--json] [--formats trace-events-all]
        QEMU log-backend trace lines as records, one JSON object per line
  doctor [--json] [--profile PATH|NAME] [--bind] [--hwpt-flags 0x0,0x8,...]
        what this host offers: KVM, IOMMU (VT-d cap/ecap), iommufd, vfio cdev, the
        profile's devices (driver, group, PASID/ATS/PRI, iommufd hw info), and each
        scenario prerequisite with the reason it is met or not`;

export async function runCli(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'run':
        return await runCommand(rest);
      case 'qemu':
        if (rest[0] === 'info') return await qemuInfoCommand(rest.slice(1));
        break;
      case 'trace':
        if (rest[0] === 'decode') {
          const { traceDecode } = await import('../trace/decode-cli.js');
          return await traceDecode(rest.slice(1));
        }
        break;
      case 'doctor': {
        const { doctorCommand } = await import('./doctor.js');
        return await doctorCommand(rest);
      }
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        console.log(usage);
        return cmd ? 0 : 2;
    }
    console.error(`harness: unknown command ${JSON.stringify([cmd, ...rest].join(' '))}\n\n${usage}`);
    return 2;
  } catch (e) {
    console.error(`harness ${cmd}: ${(e as Error).message}`);
    return 1;
  }
}

/** Minimal option parsing: --name VALUE, repeated names collect, bare flags are true. */
export function parseOptions(args: string[], spec: { flags?: string[]; values?: string[] }): {
  opts: Map<string, string[]>;
  flags: Set<string>;
  positional: string[];
} {
  const opts = new Map<string, string[]>();
  const flags = new Set<string>();
  const positional: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    if (spec.flags?.includes(name)) flags.add(name);
    else if (spec.values?.includes(name)) {
      const v = inline ?? args[++i];
      if (v === undefined) throw new Error(`option --${name} needs a value`);
      opts.set(name, [...(opts.get(name) ?? []), v]);
    } else throw new Error(`unknown option --${name}`);
  }
  return { opts, flags, positional };
}
