#!/bin/sh
# Builds a guest initramfs: a static busybox plus our own init (images/init/),
# as a gzip'd newc cpio, cached outside the clone:
#
#   $HARNESS_CACHE_DIR/initramfs/<key>/{initramfs.cpio.gz,manifest.json}
#   $HARNESS_CACHE_DIR/initramfs/ARCH.json   (the manifest of the last build)
#
# ARCH is x86_64 (default; busybox from the machine's busybox-static package,
# in scripts/bootstrap-tools.txt) or aarch64 (busybox from the arm64 root of
# scripts/install-arm64-root.sh). Nothing is downloaded here. busybox is never
# run at build time (an arm64 one cannot run here): init links its applets at
# boot (busybox --install).
#
# key = sha256 of (arch, busybox binary, every file under images/init, the
# early files, this script).
#
# --early DIR: every file under DIR goes, at the same relative path, into an
# uncompressed cpio placed before the compressed one. The kernel reads early
# files from there before unpacking the rest: ACPI table overrides
# (kernel/firmware/acpi/IORT.aml, CONFIG_ACPI_TABLE_UPGRADE), microcode. Such
# a build is a key of its own and does not replace ARCH.json unless asked
# (--publish): the plain initramfs stays the default one.
#
#   scripts/build-initramfs.sh [--arch ARCH] [--early DIR [--publish]] [--print]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"

arch=x86_64 print=no early= publish=
while [ $# -gt 0 ]; do
  case $1 in
    --print) print=yes ;;
    --arch) [ $# -ge 2 ] || die "--arch needs a value (x86_64 or aarch64)"; arch=$2; shift ;;
    --arch=*) arch=${1#*=} ;;
    --early) [ $# -ge 2 ] || die "--early needs a folder"; early=$2; shift ;;
    --publish) publish=yes ;;
    *) die "unknown argument '$1' (expected --arch ARCH, --early DIR, --publish or --print)" ;;
  esac
  shift
done
if [ -n "$early" ]; then
  [ -d "$early" ] || die "--early $early is not a folder"
  early=$(cd "$early" && pwd)
fi
[ -n "$early" ] || publish=yes
initdir="$here/../images/init"
[ -f "$initdir/init" ] || die "missing $initdir/init"

# Where the static busybox comes from, per architecture.
case $arch in
  x86_64)
    bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/busybox$' || true)
    [ -n "$bb" ] && [ -x "$bb" ] || die "busybox-static is not installed (apt-get install busybox-static; see scripts/bootstrap-tools.txt)"
    bb_version=$(dpkg-query -W -f '${Version}' busybox-static)
    bb_machine='Advanced Micro Devices X86-64'
    ;;
  aarch64)
    rootman="$HARNESS_CACHE_DIR/roots/aarch64.json"
    [ -f "$rootman" ] || die "no arm64 root ($rootman is missing): run scripts/install-arm64-root.sh"
    # The manifest is flat JSON written by install-arm64-root.sh: one "key": "value" per line.
    jfield() { sed -n "s/^  \"$1\": \"\\([^\"]*\\)\".*/\\1/p" "$rootman"; }
    root=$(jfield root)
    bb="$root/$(sed -n 's/.*"busybox": "\([^"]*\)".*/\1/p' "$rootman")"
    [ -f "$bb" ] || die "the arm64 root $root has no busybox ($bb); run scripts/install-arm64-root.sh --update"
    bb_version=$(sed -n 's/^busybox-static //p' "$root/.packages")
    bb_machine=AArch64
    ;;
  *) die "unknown --arch '$arch' (expected x86_64 or aarch64)" ;;
esac
if readelf -l "$bb" 2>/dev/null | grep -q 'program interpreter'; then
  die "$bb is dynamically linked; the initramfs needs a static busybox"
fi
m=$(readelf -h "$bb" 2>/dev/null | sed -n 's/^ *Machine: *//p')
[ "$m" = "$bb_machine" ] || die "$bb is not a $arch binary (readelf: ${m:-not an ELF})"

# "path": "sha256" lines of every file under a folder, for the manifest.
hashes_json() {
  (cd "$1" && find . -type f | LC_ALL=C sort | while read -r f; do
    printf '    "%s": "%s",\n' "${f#./}" "$(sha256sum < "$f" | cut -c1-64)"; done | sed '$ s/,$//')
}
early_hashes=
[ -z "$early" ] || early_hashes=$(hashes_json "$early")
script_sha=$(sha256sum < "$here/${0##*/}" | cut -c1-64)
key=$( (echo "$arch"; sha256sum < "$bb"; cd "$initdir" && find . -type f | LC_ALL=C sort | xargs sha256sum; echo "$early_hashes"; echo "$script_sha") | sha256sum | cut -c1-16)
iroot="$HARNESS_CACHE_DIR/initramfs"
out="$iroot/$key"
finish() {
  if [ "$publish" = yes ]; then
    cp "$out/manifest.json" "$iroot/$arch.json.tmp" && mv "$iroot/$arch.json.tmp" "$iroot/$arch.json"
  fi
  [ "$print" = yes ] && echo "$out/initramfs.cpio.gz"
  exit 0
}
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/manifest.json" ]; then finish; fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/main"
cd "$stage/main"
mkdir -p bin sbin usr/bin usr/sbin lib/harness proc sys dev tmp run root etc newroot mnt
cp "$bb" bin/busybox
chmod 755 bin/busybox
# The kernel runs /init through /bin/sh; init links the other applets.
ln -s busybox bin/sh
cp "$initdir/init" init
chmod 755 init
cp -r "$initdir/harness/." lib/harness/
chmod 755 lib/harness/stage2
echo 'root:x:0:0:root:/root:/bin/sh' > etc/passwd
echo 'root:x:0:' > etc/group

# Each input's hash goes into the manifest, so the harness can tell a stale
# archive from the images/init it has (harness/guest/image.ts).
inputs_json=$(hashes_json "$initdir")

mkdir -p "$out"
# Fixed owners and times: the same inputs give the same bytes.
newc() { find . -exec touch -h -d @0 {} + && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet; }
: > "$out/initramfs.cpio.gz.tmp"
if [ -n "$early" ]; then
  # Uncompressed, first: the kernel's early scan only reads that part.
  mkdir -p "$stage/early"
  cp -r "$early/." "$stage/early/"
  (cd "$stage/early" && newc) >> "$out/initramfs.cpio.gz.tmp"
fi
newc | gzip -9n >> "$out/initramfs.cpio.gz.tmp"
cat > "$out/manifest.json" <<JSON
{
  "arch": "$arch",
  "key": "$key",
  "busyboxPackage": "busybox-static",
  "busyboxVersion": "$bb_version",
  "busybox": "$bb",
  "initramfs": "$out/initramfs.cpio.gz",
  "scriptSha256": "$script_sha",
  "inputs": {
$inputs_json
  },
  "early": {
$early_hashes
  },
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
log "built the $arch initramfs (busybox $bb_version, key $key): $out/initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1))"
finish
