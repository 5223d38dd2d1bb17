#!/bin/sh
# Builds the harness's native helpers (images/tools/*.c) with this machine's
# gcc into $HARNESS_CACHE_DIR/tools/<machine>/<hash of the source>/NAME: a
# changed source gets a new folder, an unchanged one is a no-op, and the
# machine (uname -m) keeps an arm64 L1, which shares this cache, from ever
# picking up an x86 binary. Linked statically
# when libc.a is there, so the binary also runs inside the virtual lab's L1
# (whose root is this machine's / anyway). harness/util/native-tools.ts
# computes the same path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. "$here/lib/common.sh"

for src in images/tools/*.c; do
  [ -f "$src" ] || continue
  name=$(basename "$src" .c)
  hash=$(sha256sum "$src" | cut -c1-16)
  out="$HARNESS_CACHE_DIR/tools/$(uname -m)/$hash/$name"
  [ -x "$out" ] && continue
  command -v gcc >/dev/null 2>&1 || die "gcc is needed to build $src (Debian: build-essential)"
  mkdir -p "$(dirname "$out")"
  log "building $name"
  cflags="-O2 -Wall -Wextra -Werror -std=gnu11"
  # shellcheck disable=SC2086
  gcc $cflags -static -o "$out.tmp.$$" "$src" 2>/dev/null \
    || gcc $cflags -o "$out.tmp.$$" "$src" \
    || { rm -f "$out.tmp.$$"; die "gcc could not build $src"; }
  mv "$out.tmp.$$" "$out"
done
