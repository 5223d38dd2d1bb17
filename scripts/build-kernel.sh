#!/bin/sh
# Builds the guest kernel (x86_64 bzImage, everything built in, no modules)
# from Debian sid's newest linux-source-X.Y package: `make allnoconfig` plus
# images/kernel/x86_64.config. The result is cached outside the clone:
#
#   $HARNESS_CACHE_DIR/kernel/<key>/{bzImage,config,manifest.json}
#   $HARNESS_CACHE_DIR/kernel/x86_64.json   (the manifest of the last good build)
#
# key = sha256 of (source package version, fragment, this script), so a second
# run with the same inputs is a no-op.
#
#   scripts/build-kernel.sh            build if the key has no bzImage yet
#   scripts/build-kernel.sh --update   refresh sid's package lists first
#   scripts/build-kernel.sh --print    print the bzImage path (build if needed)
#
# The sid package lists are reused as they are (apt refreshes them only with
# --update or when there are none), so the no-op path asks no mirror.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"

arch=x86_64
fragment="$here/../images/kernel/$arch.config"
update=no print=no
for arg in "$@"; do
  case $arg in
    --update) update=yes ;;
    --print) print=yes ;;
    *) die "unknown argument '$arg' (expected --update or --print)" ;;
  esac
done
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

if [ -f "$out/bzImage" ] && [ -f "$out/manifest.json" ]; then
  cp "$out/manifest.json" "$kroot/$arch.json.tmp" && mv "$kroot/$arch.json.tmp" "$kroot/$arch.json"
  [ "$print" = yes ] && echo "$out/bzImage"
  exit 0
fi

# One build at a time: the source and object trees are shared between keys.
exec 9>"$kroot/.lock"
if ! flock -n 9; then
  log "another kernel build holds $kroot/.lock; waiting for it (at most an hour)"
  flock -w 3600 9 || die "timed out waiting for $kroot/.lock"
  if [ -f "$out/bzImage" ] && [ -f "$out/manifest.json" ]; then
    cp "$out/manifest.json" "$kroot/$arch.json.tmp" && mv "$kroot/$arch.json.tmp" "$kroot/$arch.json"
    [ "$print" = yes ] && echo "$out/bzImage"
    exit 0
  fi
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

# Object tree: one per package version too, so that a changed fragment
# rebuilds only what changed.
obj="$kroot/obj/$pkg-$version"
mkdir -p "$obj" "$out"
buildlog="$out/build.log"
: > "$buildlog"
fail() {
  printf '\n--- last 40 lines of %s ---\n' "$buildlog" >&2
  tail -n 40 "$buildlog" >&2
  die "$1 (full log: $buildlog)"
}

jobs=$(nproc 2>/dev/null || echo 2)
kmake() { make -C "$src" O="$obj" ARCH=x86_64 -j"$jobs" "$@" >>"$buildlog" 2>&1; }

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

log "compiling bzImage with make -j$jobs (log: $buildlog)"
kmake bzImage || fail "kernel build failed"
grep -q '^CONFIG_MODULES=y' "$obj/.config" && fail "CONFIG_MODULES=y: the guest kernel must have everything built in"

cp "$obj/arch/x86/boot/bzImage" "$out/bzImage.tmp"
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
  "bzImage": "$out/bzImage",
  "config": "$out/config",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "buildSeconds": $elapsed
}
JSON
mv "$out/bzImage.tmp" "$out/bzImage"
cp "$out/manifest.json" "$kroot/$arch.json.tmp" && mv "$kroot/$arch.json.tmp" "$kroot/$arch.json"
log "built $release in ${elapsed}s: $out/bzImage ($(du -h "$out/bzImage" | cut -f1))"
[ "$print" = yes ] && echo "$out/bzImage"
exit 0
