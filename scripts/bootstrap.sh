#!/bin/sh
# Everything `npm test`, `npm start` and `npm run bench` need, installed once
# and reused: Debian tools the README names, node_modules, the reference QEMU,
# the guest kernel and initramfs, the compiled harness. Each step is a no-op
# when its result is already there, so a second run takes about a second
# plus the TypeScript build.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. "$here/lib/common.sh"

# 1. Debian tools (only those in scripts/bootstrap-tools.txt, on the machine itself).
if [ -f scripts/bootstrap-tools.txt ]; then
  missing=$(grep -v '^\s*#' scripts/bootstrap-tools.txt | while read -r pkg; do
    [ -n "$pkg" ] || continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done)
  if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages (install them as root): $missing"
    log "installing Debian packages: $(echo $missing)"
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends $missing >/dev/null
  fi
fi

# 2. node_modules, when absent or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi

# 3. The reference QEMU, unless the user points at their own for both arches.
if [ -z "${QEMU_X86_64:-}" ] || [ -z "${QEMU_AARCH64:-}" ]; then
  sh scripts/install-qemu.sh
fi
# An older QEMU, Debian trixie's 10.0, the same way into qemu-trixie/: npm test
# runs the TCG suite against it as a user's own QEMU (tests/qemu/older-qemu.test.ts).
sh scripts/install-qemu.sh --release trixie

# 4. Guest kernel and initramfs (cached by their inputs; ~10 minutes the first time).
# The kernel build's progress (objects compiled, every 30 s) is watched from here.
if [ "${HARNESS_SKIP_IMAGES:-}" != 1 ]; then
  run_progress 'building the x86_64 kernel' - '^  (CC|AS)  ' 'objects compiled' sh scripts/build-kernel.sh
  sh scripts/build-initramfs.sh
fi
# The arm64 lab's images: its root (sid's arm64 Node, QEMU and UEFI firmware),
# the aarch64 kernel (cross-built, about 6 minutes the first time) and its
# initramfs (busybox from that root). Each a no-op when cached.
if [ "${HARNESS_SKIP_IMAGES:-}" != 1 ]; then
  sh scripts/install-arm64-root.sh
  run_progress 'building the aarch64 kernel' - '^  (CC|AS)  ' 'objects compiled' sh scripts/build-kernel.sh --arch aarch64
  sh scripts/build-initramfs.sh --arch aarch64
fi
# Native helpers (iommufd-probe for IOMMU_GET_HW_INFO), for this machine and
# aarch64, cached by source hash.
sh scripts/build-tools.sh

# 5. The harness itself (tests and the CLI run as compiled JavaScript); compiled
# files whose source was deleted go, so a deleted test stops running.
npx tsc -p .
sh scripts/clean-dist.sh
