import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { skipBecause } from '../report/skip.js';
import { cacheDir, repoRoot } from '../util/paths.js';

/**
 * The guest kernel and initramfs that scripts/build-kernel.sh and
 * scripts/build-initramfs.sh left in the cache. Each script writes the
 * manifest of its last good build to cacheDir()/{kernel,initramfs}/ARCH.json;
 * the manifests carry the hashes of their inputs, so a kernel built from
 * another fragment (or an initramfs from another images/init) is reported as
 * stale instead of being booted by mistake.
 */
export type GuestArch = 'x86_64';

export interface KernelManifest {
  arch: string;
  key: string;
  sourcePackage: string;
  sourceVersion: string;
  kernelRelease: string;
  fragmentSha256: string;
  scriptSha256: string;
  bzImage: string;
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
  builtAt: string;
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
}

export type ImageLookup = { ok: true; image: GuestImage } | { ok: false; reason: string };

export interface FindImageOptions {
  /** Boot a kernel or initramfs whose inputs changed since it was built. */
  allowStale?: boolean;
  cache?: string;
  repo?: string;
}

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
 * Finds the cached kernel and initramfs for `arch`. Never builds (a build
 * takes ten minutes): a missing or stale image is `{ok: false, reason}` that
 * says which script to run.
 */
export function findGuestImage(arch: GuestArch = 'x86_64', opts: FindImageOptions = {}): ImageLookup {
  const cache = opts.cache ?? cacheDir();
  const repo = opts.repo ?? repoRoot;
  const k = readManifest<KernelManifest>(join(cache, 'kernel', `${arch}.json`), `${arch} guest kernel`, 'scripts/build-kernel.sh');
  if (typeof k === 'string') return { ok: false, reason: k };
  const i = readManifest<InitramfsManifest>(join(cache, 'initramfs', `${arch}.json`), `${arch} guest initramfs`, 'scripts/build-initramfs.sh');
  if (typeof i === 'string') return { ok: false, reason: i };
  for (const [path, what, build] of [
    [k.bzImage, 'kernel image', 'scripts/build-kernel.sh'],
    [i.initramfs, 'initramfs', 'scripts/build-initramfs.sh'],
  ] as const) {
    if (!path || !existsSync(path) || statSync(path).size === 0) return { ok: false, reason: `the ${arch} guest ${what} ${path} is missing or empty: run ${build}` };
  }
  if (!opts.allowStale && process.env.HARNESS_ALLOW_STALE_IMAGE !== '1') {
    const ks = kernelStaleness(k, repo);
    if (ks) return { ok: false, reason: `stale guest kernel: ${ks}; run scripts/build-kernel.sh (or set HARNESS_ALLOW_STALE_IMAGE=1)` };
    const is = initramfsStaleness(i, repo);
    if (is) return { ok: false, reason: `stale guest initramfs: ${is}; run scripts/build-initramfs.sh (or set HARNESS_ALLOW_STALE_IMAGE=1)` };
  }
  return {
    ok: true,
    image: {
      arch,
      kernel: k.bzImage,
      initrd: i.initramfs,
      kernelConfig: k.config,
      kernelRelease: k.kernelRelease,
      kernelManifest: k,
      initramfsManifest: i,
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
