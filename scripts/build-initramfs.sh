#!/bin/sh
# Builds the guest initramfs: Debian's busybox-static plus our own init
# (images/init/), as a gzip'd newc cpio, cached outside the clone:
#
#   $HARNESS_CACHE_DIR/initramfs/<key>/{initramfs.cpio.gz,manifest.json}
#   $HARNESS_CACHE_DIR/initramfs/x86_64.json   (the manifest of the last build)
#
# key = sha256 of (busybox binary, every file under images/init, this script).
# busybox comes from the machine's busybox-static package (in
# scripts/bootstrap-tools.txt); nothing is downloaded at run time.
#
#   scripts/build-initramfs.sh           build if the key has no archive yet
#   scripts/build-initramfs.sh --print   print the archive's path too
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"

arch=x86_64
print=no
for arg in "$@"; do
  case $arg in
    --print) print=yes ;;
    *) die "unknown argument '$arg' (expected --print)" ;;
  esac
done
initdir="$here/../images/init"
[ -f "$initdir/init" ] || die "missing $initdir/init"

bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/busybox$' || true)
[ -n "$bb" ] && [ -x "$bb" ] || die "busybox-static is not installed (apt-get install busybox-static; see scripts/bootstrap-tools.txt)"
if readelf -l "$bb" 2>/dev/null | grep -q 'program interpreter'; then
  die "$bb is dynamically linked; the initramfs needs busybox-static's binary"
fi
bb_version=$(dpkg-query -W -f '${Version}' busybox-static)

inputs=$( (sha256sum < "$bb"; cd "$initdir" && find . -type f | LC_ALL=C sort | xargs sha256sum; sha256sum < "$here/${0##*/}") | sha256sum | cut -c1-16)
key=$inputs
iroot="$HARNESS_CACHE_DIR/initramfs"
out="$iroot/$key"
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/manifest.json" ]; then
  cp "$out/manifest.json" "$iroot/$arch.json.tmp" && mv "$iroot/$arch.json.tmp" "$iroot/$arch.json"
  [ "$print" = yes ] && echo "$out/initramfs.cpio.gz"
  exit 0
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cd "$stage"
mkdir -p bin sbin usr/bin usr/sbin lib/harness proc sys dev tmp run root etc newroot mnt
cp "$bb" bin/busybox
chmod 755 bin/busybox
# Every applet as a symlink, where busybox itself says it belongs.
./bin/busybox --list-full | while read -r applet; do
  [ -e "$applet" ] || [ -L "$applet" ] || ln -s /bin/busybox "$applet"
done
cp "$initdir/init" init
chmod 755 init
cp -r "$initdir/harness/." lib/harness/
chmod 755 lib/harness/stage2
echo 'root:x:0:0:root:/root:/bin/sh' > etc/passwd
echo 'root:x:0:' > etc/group

# Each input's hash goes into the manifest, so the harness can tell a stale
# archive from the images/init it has (harness/guest/image.ts).
inputs_json=$(cd "$initdir" && find . -type f | LC_ALL=C sort | while read -r f; do
  printf '    "%s": "%s",\n' "${f#./}" "$(sha256sum < "$f" | cut -c1-64)"; done | sed '$ s/,$//')
script_sha=$(sha256sum < "$here/${0##*/}" | cut -c1-64)

mkdir -p "$out"
# Fixed owners and times: the same inputs give the same bytes.
find . -exec touch -h -d @0 {} +
find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9n > "$out/initramfs.cpio.gz.tmp"
cat > "$out/manifest.json" <<JSON
{
  "arch": "$arch",
  "key": "$key",
  "busyboxPackage": "busybox-static",
  "busyboxVersion": "$bb_version",
  "initramfs": "$out/initramfs.cpio.gz",
  "scriptSha256": "$script_sha",
  "inputs": {
$inputs_json
  },
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
cp "$out/manifest.json" "$iroot/$arch.json.tmp" && mv "$iroot/$arch.json.tmp" "$iroot/$arch.json"
log "built initramfs (busybox $bb_version, key $key): $out/initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1))"
[ "$print" = yes ] && echo "$out/initramfs.cpio.gz"
exit 0
