#!/bin/sh
# Builds a guest kernel (everything built in, no modules) from Debian sid's
# newest linux-source-X.Y package: `make allnoconfig` plus
# images/kernel/ARCH.config. ARCH is x86_64 (the default: a bzImage for the
# guest tests and the x86 virtual lab's L1) or aarch64 (an Image, cross-built
# with Debian's gcc-aarch64-linux-gnu, for the arm64 lab's L1 and its L2).
# The result is cached outside the clone:
#
#   $HARNESS_CACHE_DIR/kernel/<key>/{bzImage|Image,config,manifest.json}
#   $HARNESS_CACHE_DIR/kernel/ARCH.json   (the manifest of the last good build)
#
# key = sha256 of (arch, source package version, fragment, this script), so a
# second run with the same inputs is a no-op.
#
#   scripts/build-kernel.sh [--arch ARCH]            build if the key has no image yet
#   scripts/build-kernel.sh [--arch ARCH] --update   refresh sid's package lists first
#   scripts/build-kernel.sh [--arch ARCH] --print    print the image path (build if needed)
#
# The sid package lists are reused as they are (apt refreshes them only with
# --update or when there are none), so the no-op path asks no mirror.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"

arch=x86_64
update=no print=no
while [ $# -gt 0 ]; do
  case $1 in
    --update) update=yes ;;
    --print) print=yes ;;
    --arch) [ $# -ge 2 ] || die "--arch needs a value (x86_64 or aarch64)"; arch=$2; shift ;;
    --arch=*) arch=${1#*=} ;;
    *) die "unknown argument '$1' (expected --arch ARCH, --update or --print)" ;;
  esac
  shift
done
# Per architecture: make's ARCH, the cross compiler, the boot image's make
# target (also its file name in the cache) and where make leaves it.
case $arch in
  x86_64) karch=x86_64 cross= target=bzImage built=arch/x86/boot/bzImage ;;
  aarch64)
    karch=arm64 cross=aarch64-linux-gnu- target=Image built=arch/arm64/boot/Image
    [ "$(uname -m)" = aarch64 ] && cross=
    command -v "${cross}gcc" >/dev/null 2>&1 \
      || die "${cross}gcc is needed to cross-build the $arch kernel (Debian: gcc-aarch64-linux-gnu; see scripts/bootstrap-tools.txt)"
    ;;
  *) die "unknown --arch '$arch' (expected x86_64 or aarch64)" ;;
esac
fragment="$here/../images/kernel/$arch.config"
[ -f "$fragment" ] || die "config fragment missing: $fragment"

kroot="$HARNESS_CACHE_DIR/kernel"
mkdir -p "$kroot"

# The newest linux-source-X.Y sid offers, and its version. The lists are
# refreshed only when absent or on --update (sid_apt_init refreshes lists
# older than an hour).
if [ "$update" = yes ] || [ -z "$(find "$sid_apt_root/lists" -name '*_Packages*' 2>/dev/null | head -n1)" ]; then
  sid_apt_init
fi
# Asking apt takes about a second; the answer only changes with the lists,
# so it is remembered against their size and time.
lists_stamp=$(find "$sid_apt_root/lists" -maxdepth 1 -name '*_Packages*' -printf '%f %s %T@\n' 2>/dev/null | LC_ALL=C sort | sha256sum | cut -c1-16)
pkg= version=
if [ -f "$kroot/source.cache" ]; then
  read -r cached_stamp pkg version < "$kroot/source.cache" || true
  [ "${cached_stamp:-}" = "$lists_stamp" ] || pkg= version=
fi
if [ -z "$pkg" ] || [ -z "$version" ]; then
  pkg=$(sid_apt_cache search --names-only '^linux-source-[0-9][0-9.]*$' 2>/dev/null \
    | awk '{print $1}' | sort -V | tail -n1)
  [ -n "$pkg" ] || die "no linux-source-X.Y package in Debian sid's lists ($DEBIAN_MIRROR); try --update"
  version=$(sid_apt_cache show "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n1)
  [ -n "$version" ] || die "apt knows $pkg but no version of it"
  echo "$lists_stamp $pkg $version" > "$kroot/source.cache"
fi

fragment_sha=$(sha256sum < "$fragment" | cut -c1-64)
script_sha=$(sha256sum < "$here/${0##*/}" | cut -c1-64)
key=$(printf '%s\n%s\n%s\n%s\n' "$arch" "$pkg=$version" "$fragment_sha" "$script_sha" | sha256sum | cut -c1-16)
out="$kroot/$key"

publish() {
  cp "$out/manifest.json" "$kroot/$arch.json.tmp" && mv "$kroot/$arch.json.tmp" "$kroot/$arch.json"
  [ "$print" = yes ] && echo "$out/$target"
  exit 0
}
if [ -f "$out/$target" ] && [ -f "$out/manifest.json" ]; then publish; fi

# One build at a time: the source and object trees are shared between keys.
exec 9>"$kroot/.lock"
if ! flock -n 9; then
  log "another kernel build holds $kroot/.lock; waiting for it (at most an hour)"
  flock -w 3600 9 || die "timed out waiting for $kroot/.lock"
  if [ -f "$out/$target" ] && [ -f "$out/manifest.json" ]; then publish; fi
fi

log "building $arch kernel from $pkg $version (key $key)"
started=$(date +%s)

# Source: one unpacked tree per package version, shared by every key.
src="$kroot/src/$pkg-$version"
if [ ! -f "$src/.unpacked" ]; then
  debroot="$kroot/src/.deb-$pkg-$version"
  rm -rf "$debroot" "$src"
  sid_unpack "$debroot" "$pkg"
  tarball=$(ls "$debroot/usr/src/$pkg".tar.* 2>/dev/null | head -n1)
  [ -n "$tarball" ] || die "$pkg $version has no usr/src/$pkg.tar.* ($debroot)"
  log "unpacking $(basename "$tarball")"
  mkdir -p "$src.tmp"
  tar -xf "$tarball" -C "$src.tmp" --strip-components=1
  rm -rf "$debroot"
  mv "$src.tmp" "$src"
  touch "$src/.unpacked"
fi

# Object tree: one per package version and architecture, so that a changed
# fragment rebuilds only what changed. (x86_64 keeps the name it had before
# there was a second architecture, so existing trees stay incremental.)
if [ "$arch" = x86_64 ]; then obj="$kroot/obj/$pkg-$version"; else obj="$kroot/obj/$arch-$pkg-$version"; fi
mkdir -p "$obj" "$out"
buildlog="$out/build.log"
: > "$buildlog"
fail() {
  printf '\n--- last 40 lines of %s ---\n' "$buildlog" >&2
  tail -n 40 "$buildlog" >&2
  die "$1 (full log: $buildlog)"
}

jobs=$(nproc 2>/dev/null || echo 2)
kmake() { make -C "$src" O="$obj" ARCH="$karch" ${cross:+CROSS_COMPILE=$cross} -j"$jobs" "$@" >>"$buildlog" 2>&1; }

log "configuring: allnoconfig + $(basename "$fragment")"
kmake KCONFIG_ALLCONFIG="$fragment" allnoconfig || fail "make allnoconfig failed"

# Kconfig drops what it cannot satisfy without a word: check every line.
missing=$(awk '
  FILENAME == ARGV[1] {
    if ($0 ~ /^CONFIG_/) { n = index($0, "="); val[substr($0, 1, n - 1)] = $0 }
    next
  }
  /^CONFIG_[A-Za-z0-9_]+=/ {
    n = index($0, "="); name = substr($0, 1, n - 1)
    if (!(name in val)) print "  " $0 "   (final: not set)"
    else if (val[name] != $0) print "  " $0 "   (final: " val[name] ")"
  }
  /^# CONFIG_[A-Za-z0-9_]+ is not set/ {
    if ($2 in val) print "  " $0 "   (final: " val[$2] ")"
  }
' "$obj/.config" "$fragment")
if [ -n "$missing" ]; then
  printf '%s\n' "$missing" >&2
  die "these fragment options did not survive Kconfig (unmet dependencies?); fix $fragment"
fi

log "compiling $target with make -j$jobs (log: $buildlog)"
kmake "$target" || fail "kernel build failed"
grep -q '^CONFIG_MODULES=y' "$obj/.config" && fail "CONFIG_MODULES=y: the guest kernel must have everything built in"

cp "$obj/$built" "$out/$target.tmp"
cp "$obj/.config" "$out/config"
release=$(cat "$obj/include/config/kernel.release" 2>/dev/null || echo unknown)
elapsed=$(( $(date +%s) - started ))
cat > "$out/manifest.json" <<JSON
{
  "arch": "$arch",
  "key": "$key",
  "sourcePackage": "$pkg",
  "sourceVersion": "$version",
  "kernelRelease": "$release",
  "fragmentSha256": "$fragment_sha",
  "scriptSha256": "$script_sha",
  "image": "$out/$target",
  "config": "$out/config",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "buildSeconds": $elapsed
}
JSON
mv "$out/$target.tmp" "$out/$target"
log "built $arch $release in ${elapsed}s: $out/$target ($(du -h "$out/$target" | cut -f1))"
publish
