#!/bin/sh
# Builds the harness's native helpers (images/tools/*.c) into
# $HARNESS_CACHE_DIR/tools/<machine>/<hash of the source>/NAME, for this
# machine (uname -m, with gcc) and, on x86_64, for aarch64 too (cross-built
# with Debian's gcc-aarch64-linux-gnu): the arm64 virtual lab's L1 runs on an
# x86 L0 and shares its cache. A changed source gets a new folder, an
# unchanged one is a no-op, and the machine in the path keeps an L1 from ever
# picking up another machine's binary. Linked statically when that libc.a is
# there, so a binary runs in any root (the x86 L1's is this machine's /, the
# arm64 L1's is sid's). harness/util/native-tools.ts computes the same path.
#
#   scripts/build-tools.sh                 every machine above
#   scripts/build-tools.sh --machine M     just M (x86_64 or aarch64)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. "$here/lib/common.sh"

native=$(uname -m)
machines=$native
[ "$native" = x86_64 ] && machines="$machines aarch64"
case "${1:-}" in
  '') ;;
  --machine) [ $# -ge 2 ] || die "--machine needs a value (x86_64 or aarch64)"; machines=$2 ;;
  *) die "unknown argument '$1' (expected --machine M)" ;;
esac

# The compiler for machine $1: gcc for this machine, else Debian's cross gcc.
compiler_for() {
  if [ "$1" = "$native" ]; then echo gcc; else echo "$1-linux-gnu-gcc"; fi
}
# The Debian package that provides that compiler, for the error message.
package_for() {
  if [ "$1" = "$native" ]; then echo build-essential; else echo "gcc-$1-linux-gnu (scripts/bootstrap-tools.txt)"; fi
}

for machine in $machines; do
  case $machine in x86_64 | aarch64) ;; *) die "unknown machine '$machine' (expected x86_64 or aarch64)" ;; esac
  cc=$(compiler_for "$machine")
  for src in images/tools/*.c; do
    [ -f "$src" ] || continue
    name=$(basename "$src" .c)
    hash=$(sha256sum "$src" | cut -c1-16)
    out="$HARNESS_CACHE_DIR/tools/$machine/$hash/$name"
    [ -x "$out" ] && continue
    command -v "$cc" >/dev/null 2>&1 || die "$cc is needed to build $src for $machine (Debian: $(package_for "$machine"))"
    mkdir -p "$(dirname "$out")"
    log "building $name for $machine"
    cflags="-O2 -Wall -Wextra -Werror -std=gnu11"
    # shellcheck disable=SC2086
    "$cc" $cflags -static -o "$out.tmp.$$" "$src" 2>/dev/null \
      || "$cc" $cflags -o "$out.tmp.$$" "$src" \
      || { rm -f "$out.tmp.$$"; die "$cc could not build $src"; }
    mv "$out.tmp.$$" "$out"
  done
done
