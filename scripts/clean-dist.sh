#!/bin/sh
# Removes compiled files under dist/ whose TypeScript source is gone, so a
# deleted or renamed test stops running (mocha's spec globs read dist/) and a
# deleted module cannot be imported by stale JavaScript. Only orphans go:
# dist/ is rebuilt in place by tsc, and a run going on at the same time (or
# another engineer's L1 reading the checkout) keeps every file it still has
# a source for.  Usage: clean-dist.sh [ROOT] (default: the checkout).
set -eu
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
[ -d "$root/dist" ] || exit 0
cd "$root"
removed=0
# Paths have no newlines (they are this repository's own); find -print is safe to read by line.
for f in $(find dist -type f \( -name '*.js' -o -name '*.js.map' \) -print); do
  js=${f%.map}
  src=${js#dist/}
  src=${src%.js}.ts
  if [ ! -f "$src" ]; then
    rm -f "$f"
    removed=$((removed + 1))
  fi
done
find dist -depth -type d -empty -delete
[ "$removed" = 0 ] || printf '[clean-dist.sh] removed %s compiled files without a source\n' "$removed" >&2
