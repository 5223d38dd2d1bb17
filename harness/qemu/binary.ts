import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { cacheDir } from '../util/paths.js';
import { scaled } from '../util/timeouts.js';

export type Arch = 'x86_64' | 'aarch64';
export const ARCHES: readonly Arch[] = ['x86_64', 'aarch64'];

/** How to run one QEMU system emulator, and where its data files are. */
export interface QemuBinary {
  arch: Arch;
  /** The qemu-system-* executable itself. */
  path: string;
  /** What to exec: the binary, or the reference sysroot's dynamic loader. */
  command: string;
  /** Arguments before QEMU's own (loader options and the binary path). */
  prefixArgs: string[];
  /** Arguments QEMU always gets (firmware search paths). */
  baseArgs: string[];
  env: Record<string, string>;
  /** Where this QEMU came from, for messages and reports. */
  source: 'option' | 'environment' | 'reference';
  /** The build's trace-events-all, when found. */
  traceEventsAll?: string;
}

export class QemuNotFoundError extends Error {
  override name = 'QemuNotFoundError';
}

export interface FindOptions {
  /** An explicit path for this arch (CLI option); wins over everything. */
  path?: string;
  /** Where `path` came from, for messages (default `--qemu-ARCH`). */
  origin?: string;
  env?: NodeJS.ProcessEnv;
}

/** Environment variables naming a user's QEMU, most specific first. */
export function envVarsFor(arch: Arch): string[] {
  return [`QEMU_${arch.toUpperCase()}`, 'QEMU'];
}

/**
 * Finds the QEMU for `arch`. A user's own build always wins: an explicit path,
 * then $QEMU_X86_64 / $QEMU_AARCH64, then $QEMU when its name says it is this
 * arch's emulator; only then the reference QEMU installed by
 * scripts/install-qemu.sh.
 */
export function findQemu(arch: Arch, opts: FindOptions = {}): QemuBinary {
  const env = opts.env ?? process.env;
  if (opts.path) return userBinary(arch, opts.path, 'option', opts.origin ?? `--qemu-${arch}`);
  for (const name of envVarsFor(arch)) {
    const p = env[name];
    if (!p) continue;
    if (name === 'QEMU' && !p.endsWith(`qemu-system-${arch}`)) continue;
    return userBinary(arch, p, 'environment', `$${name}`);
  }
  return referenceBinary(arch);
}

function userBinary(arch: Arch, path: string, source: QemuBinary['source'], origin: string): QemuBinary {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new QemuNotFoundError(`${origin} names ${abs}, which does not exist`);
  const st = statSync(abs);
  if (!st.isFile() || (st.mode & 0o111) === 0) throw new QemuNotFoundError(`${origin} names ${abs}, which is not an executable file`);
  // A QEMU unpacked by scripts/install-qemu.sh (another Debian release's, say)
  // runs like the reference: through its own loader, with its own firmware
  // and trace-events-all, whether the user names its bin/ wrapper or the
  // binary inside the sysroot.
  const installed = installedQemuAt(arch, abs);
  if (installed) return sysrootBinary(arch, installed.root, installed.manifest, source);
  const dir = dirname(abs);
  // A build tree keeps trace-events-all beside the binary (or in trace/); an
  // installed QEMU keeps it in PREFIX/share/qemu.
  const traceEventsAll = [join(dir, 'trace-events-all'), join(dir, 'trace', 'trace-events-all'), join(dir, '..', 'share', 'qemu', 'trace-events-all')]
    .find((p) => existsSync(p));
  return { arch, path: abs, command: abs, prefixArgs: [], baseArgs: [], env: {}, source, ...(traceEventsAll ? { traceEventsAll } : {}) };
}

/** The install-qemu.sh sysroot `abs` belongs to: ROOT/bin/NAME (wrapper) or ROOT/<manifest's binary>. */
function installedQemuAt(arch: Arch, abs: string): { root: string; manifest: ReferenceManifest } | undefined {
  for (const root of [dirname(dirname(abs)), dirname(dirname(dirname(abs)))]) {
    // A user's tree may hold a manifest.json of its own: only one shaped like
    // install-qemu.sh's, naming this very binary, counts.
    let manifest: ReferenceManifest | undefined;
    try {
      manifest = readManifest(root);
    } catch {
      continue;
    }
    const binary = manifest?.binaries?.[arch];
    if (!manifest || typeof binary !== 'string' || typeof manifest.loader !== 'string') continue;
    if (abs === join(root, 'bin', basename(binary)) || abs === join(root, binary)) return { root, manifest };
  }
  return undefined;
}

export interface ReferenceManifest {
  /** Debian release it came from (absent in manifests written before releases were a parameter: sid). */
  release?: string;
  debianVersion: string;
  installedAt: string;
  loader: string;
  libraryPath: string;
  moduleDir: string;
  firmwareDirs: string[];
  binaries: Record<Arch, string>;
}

export function referenceRoot(): string {
  return join(cacheDir(), 'qemu');
}

/**
 * Where `scripts/install-qemu.sh --release RELEASE` puts another Debian
 * release's QEMU (sid's is the reference, in referenceRoot()).
 */
export function releaseQemuRoot(release: string): string {
  return release === 'sid' ? referenceRoot() : join(cacheDir(), `qemu-${release}`);
}

/** The wrapper a person (or a test acting as one) passes as --qemu-<arch> for that release. */
export function releaseQemuWrapper(release: string, arch: Arch): string {
  return join(releaseQemuRoot(release), 'bin', `qemu-system-${arch}`);
}

function readManifest(root: string): ReferenceManifest | undefined {
  const p = join(root, 'manifest.json');
  if (!existsSync(p)) return undefined;
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as ReferenceManifest;
  } catch (e) {
    throw new QemuNotFoundError(`${p} is not JSON (${(e as Error).message}); rerun scripts/install-qemu.sh --update`);
  }
}

export function readReferenceManifest(): ReferenceManifest | undefined {
  return readManifest(referenceRoot());
}

/** The reference QEMU runs through its sysroot's own loader and libraries. */
function referenceBinary(arch: Arch): QemuBinary {
  const root = referenceRoot();
  const m = readReferenceManifest();
  if (!m) {
    throw new QemuNotFoundError(
      `no QEMU for ${arch}: set ${envVarsFor(arch).join(' or ')} to your build, or install the reference QEMU with scripts/install-qemu.sh (expected ${root}/manifest.json)`,
    );
  }
  return sysrootBinary(arch, root, m, 'reference');
}

function sysrootBinary(arch: Arch, root: string, m: ReferenceManifest, source: QemuBinary['source']): QemuBinary {
  const path = join(root, m.binaries[arch]);
  if (!existsSync(path)) throw new QemuNotFoundError(`the QEMU installed at ${root} has no ${m.binaries[arch]}; rerun scripts/install-qemu.sh --update`);
  const traceEventsAll = join(root, 'usr/share/qemu/trace-events-all');
  return {
    arch,
    path,
    command: join(root, m.loader),
    prefixArgs: ['--library-path', join(root, m.libraryPath), path],
    baseArgs: m.firmwareDirs.flatMap((d) => ['-L', join(root, d)]),
    env: { QEMU_MODULE_DIR: join(root, m.moduleDir) },
    source,
    ...(existsSync(traceEventsAll) ? { traceEventsAll } : {}),
  };
}

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  /** The whole first line of --version, e.g. "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)". */
  text: string;
}

/** Runs `--version`; a binary that does not answer like QEMU is an error naming it. */
export async function qemuVersion(bin: QemuBinary): Promise<QemuVersion> {
  const r = await execa(bin.command, [...bin.prefixArgs, '--version'], { env: bin.env, reject: false, timeout: scaled(10_000) });
  const line = r.stdout.split('\n')[0] ?? '';
  const m = /^QEMU emulator version (\d+)\.(\d+)\.(\d+)/.exec(line);
  if (!m) {
    const why = r.timedOut ? 'timed out' : `exit ${r.exitCode ?? r.signal}, printed ${JSON.stringify((r.stdout + r.stderr).slice(0, 200))}`;
    throw new QemuNotFoundError(`${bin.path} is not QEMU (--version ${why})`);
  }
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3]), text: line.trim() };
}
