#!/bin/sh
# Installs Debian sid's python3-qemu-qmp (QEMU's own Python QMP library, the
# bench's peer) into $HARNESS_CACHE_DIR/pyqmp, without touching system paths.
# It is pure Python; the machine's python3 runs it with PYTHONPATH set.
set -eu
. "$(dirname "$0")/lib/common.sh"
dest="$HARNESS_CACHE_DIR/pyqmp"
[ -f "$dest/.packages" ] && [ "${1:-}" != "--update" ] && exit 0
rm -rf "$dest.new"
sid_unpack_one "$dest.new" python3-qemu-qmp
rm -rf "$dest" && mv "$dest.new" "$dest"
log "installed $(cat "$dest/.packages") into $dest"
