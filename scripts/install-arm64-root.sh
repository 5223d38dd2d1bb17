#!/bin/sh
# Installs the arm64 root file system of the arm64 virtual lab: Debian sid's
# arm64 Node, QEMU (qemu-system-arm with its whole closure), UEFI firmware
# (QEMU_EFI.fd), busybox, util-linux and kmod, unpacked with the private apt
# (dpkg -x, nothing runs, nothing is registered) into
#
#   $HARNESS_CACHE_DIR/roots/aarch64-<key>/          (manifest.json inside)
#   $HARNESS_CACHE_DIR/roots/aarch64.json            (the manifest of the last good install)
#
# key = sha256 of (the package list, this script). The root serves twice: as
# the arm64 L1's / over read-only virtio-9p (L1 runs its Node natively), and
# as the source of L2's QEMU (L1 runs the root's own
# /usr/bin/qemu-system-aarch64). Nothing here can run on an x86 machine, so
# the checks are of the files (ELF machine, loader), not of running them: the
# arm64 boot test runs Node there.
#
#   scripts/install-arm64-root.sh            install if absent (a no-op when present)
#   scripts/install-arm64-root.sh --update   reinstall whatever sid has now
#   scripts/install-arm64-root.sh --print    print the root's path too
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"

DEB_ARCH=arm64
export DEB_ARCH
machine=aarch64
multiarch_dir=aarch64-linux-gnu
# busybox-static: the initramfs's busybox (scripts/build-initramfs.sh --arch
# aarch64 takes it from here). util-linux and kmod: what a root's tools
# (mount, lsmod-free kernels aside) expect to find.
packages="nodejs qemu-system-arm qemu-efi-aarch64 busybox-static util-linux kmod"

update=no print=no
for arg in "$@"; do
  case $arg in
    --update) update=yes ;;
    --print) print=yes ;;
    *) die "unknown argument '$arg' (expected --update or --print)" ;;
  esac
done

rroot="$HARNESS_CACHE_DIR/roots"
script_sha=$(sha256sum < "$here/${0##*/}" | cut -c1-64)
key=$(printf '%s\n%s\n%s\n' "$machine" "$packages" "$script_sha" | sha256sum | cut -c1-16)
dest="$rroot/$machine-$key"
pointer="$rroot/$machine.json"

publish() {
  cp "$dest/manifest.json" "$pointer.tmp" && mv "$pointer.tmp" "$pointer"
  [ "$print" = yes ] && echo "$dest"
  exit 0
}
if [ "$update" = no ] && [ -f "$dest/manifest.json" ]; then publish; fi

mkdir -p "$rroot"
# One install at a time per key: a second bootstrap waits for the first.
exec 9>"$rroot/.lock-$machine"
flock -w 1800 9 || die "timed out waiting for $rroot/.lock-$machine"
if [ "$update" = no ] && [ -f "$dest/manifest.json" ]; then publish; fi

started=$(date +%s)
tmp="$dest.new.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
# shellcheck disable=SC2086
sid_unpack "$tmp" $packages

# Sid is merged-/usr: packages ship /usr/bin and /usr/lib, and the top-level
# links come from base-files' maintainer script, which dpkg -x does not run.
# ELF interpreters are /lib/ld-linux-aarch64.so.1, scripts say /bin/sh.
for d in bin sbin lib; do
  if [ ! -e "$tmp/$d" ] && [ ! -L "$tmp/$d" ]; then ln -s "usr/$d" "$tmp/$d"; fi
done
# Mount points init needs in a 9p root (images/init/init checks them), and
# the files a login-less root still needs (users for ls -l, ps; the loader cache).
mkdir -p "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/run" "$tmp/tmp" "$tmp/var/tmp" "$tmp/root" "$tmp/mnt" "$tmp/etc"
[ -f "$tmp/etc/passwd" ] || echo 'root:x:0:0:root:/root:/bin/sh' > "$tmp/etc/passwd"
[ -f "$tmp/etc/group" ] || echo 'root:x:0:' > "$tmp/etc/group"
[ -e "$tmp/bin/sh" ] || ln -s busybox "$tmp/usr/bin/sh"

loader="usr/lib/ld-linux-aarch64.so.1"
[ -e "$tmp/$loader" ] || loader="usr/lib/$multiarch_dir/ld-linux-aarch64.so.1"
[ -e "$tmp/$loader" ] || die "no arm64 dynamic loader (ld-linux-aarch64.so.1) in the unpacked root $tmp"
[ -e "$tmp/lib/ld-linux-aarch64.so.1" ] || die "/lib/ld-linux-aarch64.so.1 does not resolve in $tmp (merged-/usr link missing?)"

# Every binary the lab runs is there and is an AArch64 ELF (an x86 file here
# would only fail inside L1, minutes later).
check_elf() {
  f="$tmp/$1"
  [ -f "$f" ] || die "$1 missing from the unpacked arm64 packages"
  m=$(readelf -h "$f" 2>/dev/null | sed -n 's/^ *Machine: *//p')
  [ "$m" = AArch64 ] || die "$1 is not an AArch64 ELF (readelf says: ${m:-not an ELF})"
}
check_elf usr/bin/node
check_elf usr/bin/qemu-system-aarch64
bb=usr/bin/busybox
[ -f "$tmp/$bb" ] || bb=bin/busybox
check_elf "$bb"
readelf -l "$tmp/$bb" | grep -q 'program interpreter' && die "$bb in the arm64 root is dynamically linked (busybox-static expected)"
efi=usr/share/qemu-efi-aarch64/QEMU_EFI.fd
[ -f "$tmp/$efi" ] || die "$efi missing (package qemu-efi-aarch64)"

pkgver() { sed -n "s/^$1 //p" "$tmp/.packages"; }
node_version=$(pkgver nodejs)
qemu_version=$(pkgver qemu-system-arm)
[ -n "$node_version" ] && [ -n "$qemu_version" ] || die "nodejs or qemu-system-arm missing from $tmp/.packages"
elapsed=$(( $(date +%s) - started ))
cat > "$tmp/manifest.json" <<JSON
{
  "machine": "$machine",
  "debianArch": "$DEB_ARCH",
  "key": "$key",
  "root": "$dest",
  "source": "Debian $(deb_suite) $DEB_ARCH ($DEBIAN_MIRROR)",
  "requested": "$packages",
  "nodeVersion": "$node_version",
  "qemuVersion": "$qemu_version",
  "loader": "$loader",
  "libraryPath": "usr/lib/$multiarch_dir",
  "moduleDir": "usr/lib/$multiarch_dir/qemu",
  "firmwareDirs": ["usr/share/qemu", "usr/share/qemu-efi-aarch64"],
  "binaries": { "node": "usr/bin/node", "aarch64": "usr/bin/qemu-system-aarch64", "busybox": "$bb" },
  "uefi": "$efi",
  "scriptSha256": "$script_sha",
  "installedAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "installSeconds": $elapsed,
  "packages": "$(tr '\n' ';' < "$tmp/.packages")"
}
JSON
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "installed the arm64 root (node $node_version, QEMU $qemu_version, $(wc -l < "$dest/.packages") packages, $(du -sh "$dest" | cut -f1)) in ${elapsed}s: $dest"
publish
