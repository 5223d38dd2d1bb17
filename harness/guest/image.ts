import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { Arch } from '../qemu/binary.js';
import { skipBecause } from '../report/skip.js';
import { cacheDir, repoRoot } from '../util/paths.js';

/**
 * The guest kernel and initramfs that scripts/build-kernel.sh and
 * scripts/build-initramfs.sh left in the cache (and, for an arm64 guest, the
 * arm64 root of scripts/install-arm64-root.sh: its / over 9p and its UEFI
 * firmware). Each script writes the manifest of its last good build to
 * cacheDir()/{kernel,initramfs,roots}/ARCH.json; the manifests carry the
 * hashes of their inputs, so a kernel built from another fragment (or an
 * initramfs from another images/init) is reported as stale instead of being
 * booted by mistake. Everything is keyed by architecture: an arm64 L1 shares
 * L0's cache and must never pick up an x86 artifact.
 */
export type GuestArch = Arch;

export interface KernelManifest {
  arch: string;
  key: string;
  sourcePackage: string;
  sourceVersion: string;
  kernelRelease: string;
  fragmentSha256: string;
  scriptSha256: string;
  /** The boot image (bzImage on x86_64, Image on aarch64). */
  image?: string;
  /** The same, as manifests written before there was a second architecture name it. */
  bzImage?: string;
  config: string;
  builtAt: string;
  buildSeconds: number;
}

export interface InitramfsManifest {
  arch: string;
  key: string;
  busyboxVersion: string;
  initramfs: string;
  scriptSha256: string;
  inputs: Record<string, string>;
  /** Files of the uncompressed early cpio before the main one (ACPI overrides), by path. */
  early?: Record<string, string>;
  builtAt: string;
}

/** roots/ARCH.json, written by scripts/install-arm64-root.sh. Paths are relative to `root`. */
export interface RootManifest {
  machine: string;
  key: string;
  root: string;
  nodeVersion: string;
  qemuVersion: string;
  loader: string;
  libraryPath: string;
  moduleDir: string;
  firmwareDirs: string[];
  binaries: { node: string; aarch64: string; busybox: string };
  uefi: string;
  scriptSha256: string;
  installedAt: string;
  installSeconds: number;
  packages: string;
}

/** The guest's own root file system (booted over read-only 9p) and its firmware. */
export interface GuestRoot {
  path: string;
  /** UEFI firmware for -bios. */
  uefi: string;
  manifest: RootManifest;
}

export interface GuestImage {
  arch: GuestArch;
  kernel: string;
  initrd: string;
  /** The kernel's final .config. */
  kernelConfig: string;
  kernelRelease: string;
  kernelManifest: KernelManifest;
  initramfsManifest: InitramfsManifest;
  /** An arm64 guest's root (its Node, QEMU, firmware); x86 guests boot into L0's /. */
  root?: GuestRoot;
}

export type ImageLookup = { ok: true; image: GuestImage } | { ok: false; reason: string };

export interface FindImageOptions {
  /** Boot a kernel or initramfs whose inputs changed since it was built. */
  allowStale?: boolean;
  cache?: string;
  repo?: string;
}

/**
 * What each architecture's image is made of, and the commands that build it.
 * An x86 guest's root is the host's own / (the reference QEMU and Node run
 * there), so it has none of its own; an arm64 one cannot run the host's
 * binaries and boots into the arm64 root.
 */
const IMAGE_PARTS: Record<GuestArch, { kernel: string; initramfs: string; root?: string }> = {
  x86_64: { kernel: 'scripts/build-kernel.sh', initramfs: 'scripts/build-initramfs.sh' },
  aarch64: {
    kernel: 'scripts/build-kernel.sh --arch aarch64',
    initramfs: 'scripts/build-initramfs.sh --arch aarch64',
    root: 'scripts/install-arm64-root.sh',
  },
};

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

function readManifest<T>(path: string, what: string, build: string): T | string {
  if (!existsSync(path)) return `no ${what} built yet (${path} is missing): run ${build}`;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch (e) {
    return `the ${what} manifest ${path} is not valid JSON (${(e as Error).message}): run ${build}`;
  }
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

/** The kernel's boot image, from a manifest of either generation. */
export function kernelImagePath(m: KernelManifest): string | undefined {
  return m.image ?? m.bzImage;
}

/** Why the arm64 root is stale, or undefined when it came from the repo's install script. */
export function rootStaleness(m: RootManifest, repo = repoRoot): string | undefined {
  const script = join(repo, 'scripts', 'install-arm64-root.sh');
  if (existsSync(script) && sha256(script) !== m.scriptSha256) return `${script} changed since the ${m.machine} root was installed`;
  return undefined;
}

/** Why the kernel is stale, or undefined when its inputs are the repo's. */
export function kernelStaleness(m: KernelManifest, repo = repoRoot): string | undefined {
  const fragment = join(repo, 'images', 'kernel', `${m.arch}.config`);
  const script = join(repo, 'scripts', 'build-kernel.sh');
  if (existsSync(fragment) && sha256(fragment) !== m.fragmentSha256) return `${fragment} changed since the kernel was built`;
  if (existsSync(script) && sha256(script) !== m.scriptSha256) return `${script} changed since the kernel was built`;
  return undefined;
}

/** Why the initramfs is stale, or undefined when its inputs are the repo's. */
export function initramfsStaleness(m: InitramfsManifest, repo = repoRoot): string | undefined {
  const initDir = join(repo, 'images', 'init');
  const script = join(repo, 'scripts', 'build-initramfs.sh');
  if (existsSync(script) && sha256(script) !== m.scriptSha256) return `${script} changed since the initramfs was built`;
  if (!existsSync(initDir)) return undefined;
  const now = filesUnder(initDir);
  const built = Object.keys(m.inputs ?? {}).sort();
  for (const f of now) {
    if (!(f in (m.inputs ?? {}))) return `images/init/${f} is new since the initramfs was built`;
    if (sha256(join(initDir, f)) !== m.inputs[f]) return `images/init/${f} changed since the initramfs was built`;
  }
  const gone = built.find((f) => !now.includes(f));
  return gone ? `images/init/${gone} was removed since the initramfs was built` : undefined;
}

/**
 * Finds the cached kernel and initramfs (and root, for arm64) for `arch`.
 * Never builds (a kernel build takes minutes): a missing or stale image is
 * `{ok: false, reason}` that says which script to run.
 */
export function findGuestImage(arch: GuestArch = 'x86_64', opts: FindImageOptions = {}): ImageLookup {
  const cache = opts.cache ?? cacheDir();
  const repo = opts.repo ?? repoRoot;
  const parts = IMAGE_PARTS[arch];
  if (!parts) return { ok: false, reason: `no guest image for architecture ${JSON.stringify(arch)} (known: ${Object.keys(IMAGE_PARTS).join(', ')})` };
  const k = readManifest<KernelManifest>(join(cache, 'kernel', `${arch}.json`), `${arch} guest kernel`, parts.kernel);
  if (typeof k === 'string') return { ok: false, reason: k };
  const i = readManifest<InitramfsManifest>(join(cache, 'initramfs', `${arch}.json`), `${arch} guest initramfs`, parts.initramfs);
  if (typeof i === 'string') return { ok: false, reason: i };
  let r: RootManifest | undefined;
  if (parts.root) {
    const m = readManifest<RootManifest>(join(cache, 'roots', `${arch}.json`), `${arch} root file system`, parts.root);
    if (typeof m === 'string') return { ok: false, reason: m };
    r = m;
  }
  const kernel = kernelImagePath(k);
  const files: Array<[string | undefined, string, string]> = [
    [kernel, 'kernel image', parts.kernel],
    [i.initramfs, 'initramfs', parts.initramfs],
    ...(r && parts.root
      ? ([
          [r.root && join(r.root, r.binaries?.node ?? ''), 'root\'s node', parts.root],
          [r.root && join(r.root, r.uefi ?? ''), 'root\'s UEFI firmware', parts.root],
        ] as Array<[string, string, string]>)
      : []),
  ];
  for (const [path, what, build] of files) {
    if (!path || !existsSync(path) || statSync(path).size === 0) return { ok: false, reason: `the ${arch} guest ${what} ${path} is missing or empty: run ${build}` };
  }
  if (!opts.allowStale && process.env.HARNESS_ALLOW_STALE_IMAGE !== '1') {
    const ks = kernelStaleness(k, repo);
    if (ks) return { ok: false, reason: `stale guest kernel: ${ks}; run ${parts.kernel} (or set HARNESS_ALLOW_STALE_IMAGE=1)` };
    const is = initramfsStaleness(i, repo);
    if (is) return { ok: false, reason: `stale guest initramfs: ${is}; run ${parts.initramfs} (or set HARNESS_ALLOW_STALE_IMAGE=1)` };
    const rs = r && rootStaleness(r, repo);
    if (rs) return { ok: false, reason: `stale ${arch} root: ${rs}; run ${parts.root} (or set HARNESS_ALLOW_STALE_IMAGE=1)` };
  }
  return {
    ok: true,
    image: {
      arch,
      kernel: kernel!,
      initrd: i.initramfs,
      kernelConfig: k.config,
      kernelRelease: k.kernelRelease,
      kernelManifest: k,
      initramfsManifest: i,
      ...(r ? { root: { path: r.root, uefi: join(r.root, r.uefi), manifest: r } } : {}),
    },
  };
}

/** The guest image, or a skip of the current test/suite naming what is missing. */
export function requireGuestImage(ctx: Mocha.Context, arch: GuestArch = 'x86_64', opts: FindImageOptions = {}): GuestImage {
  const r = findGuestImage(arch, opts);
  if (!r.ok) return skipBecause(ctx, r.reason);
  return r.image;
}

/** The kernel's final .config as a map (CONFIG_X → "y" | "m" | "value"). */
export function readKernelConfig(path: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (line.startsWith('CONFIG_') && eq > 0) m.set(line.slice(0, eq), line.slice(eq + 1).replace(/^"(.*)"$/, '$1'));
  }
  return m;
}
