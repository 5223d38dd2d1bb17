#!/bin/sh
# Installs the reference QEMU (Debian sid's current qemu-system-x86 and
# qemu-system-arm, with firmware) into $HARNESS_CACHE_DIR/qemu without touching
# the machine's system paths. The binaries run through the unpacked sysroot's
# own dynamic loader (see harness/qemu/binary.ts); wrappers in qemu/bin/ do the
# same for people.
#
# --release installs another Debian release's QEMU the same way into its own
# folder, qemu-<release>: an older QEMU (trixie's 10.0) the project's tests
# run as a user's QEMU would (--qemu-x86_64 .../qemu-trixie/bin/qemu-system-x86_64).
#
#   scripts/install-qemu.sh                     install if absent (a no-op when present)
#   scripts/install-qemu.sh --update            reinstall whatever sid has now
#   scripts/install-qemu.sh --release trixie    trixie's QEMU into qemu-trixie
set -eu
. "$(dirname "$0")/lib/common.sh"

release=sid
update=
while [ $# -gt 0 ]; do
  case $1 in
    --update) update=1 ;;
    --release) [ $# -ge 2 ] || die "--release needs a Debian release name (e.g. trixie)"; release=$2; shift ;;
    --release=*) release=${1#--release=} ;;
    *) die "unknown argument $1 (expected --update or --release NAME)" ;;
  esac
  shift
done
case $release in
  ''|*[!a-z0-9-]*) die "--release $release is not a Debian release name" ;;
esac
# The private apt in lib/common.sh reads the release from DEB_SUITE.
DEB_SUITE=$release
if [ "$release" = sid ]; then dest="$HARNESS_CACHE_DIR/qemu"; else dest="$HARNESS_CACHE_DIR/qemu-$release"; fi
manifest="$dest/manifest.json"
packages="qemu-system-x86 qemu-system-arm qemu-system-data qemu-efi-aarch64 seabios ipxe-qemu"

if [ -z "$update" ] && [ -f "$manifest" ]; then
  exit 0
fi

tmp="$dest.new.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
# shellcheck disable=SC2086
sid_unpack "$tmp" $packages

arch_lib="usr/lib/$(multiarch)"
loader=$(ls "$tmp/$arch_lib"/ld-linux*.so.* 2>/dev/null | head -n1)
[ -n "$loader" ] || die "no dynamic loader in the unpacked sysroot ($tmp/$arch_lib)"
loader=${loader#"$tmp/"}

version=$(sed -n 's/^qemu-system-x86 //p' "$tmp/.packages")
mkdir -p "$tmp/bin"
for exe in qemu-system-x86_64 qemu-system-aarch64; do
  [ -x "$tmp/usr/bin/$exe" ] || die "$exe missing from the unpacked packages"
  cat > "$tmp/bin/$exe" <<WRAP
#!/bin/sh
# Runs $release's $exe through $release's own loader and libraries.
root=\$(cd "\$(dirname "\$0")/.." && pwd)
QEMU_MODULE_DIR=\${QEMU_MODULE_DIR:-\$root/usr/lib/$(multiarch)/qemu}
export QEMU_MODULE_DIR
exec "\$root/$loader" --library-path "\$root/$arch_lib" "\$root/usr/bin/$exe" \\
  -L "\$root/usr/share/qemu" -L "\$root/usr/share/seabios" -L "\$root/usr/lib/ipxe/qemu" "\$@"
WRAP
  chmod +x "$tmp/bin/$exe"
done

"$tmp/bin/qemu-system-x86_64" --version | head -n1 | grep -q 'QEMU emulator version' \
  || die "the unpacked qemu-system-x86_64 does not run"

cat > "$tmp/manifest.json" <<JSON
{
  "source": "Debian $release ($DEBIAN_MIRROR)",
  "release": "$release",
  "debianVersion": "$version",
  "installedAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "loader": "$loader",
  "libraryPath": "$arch_lib",
  "moduleDir": "$arch_lib/qemu",
  "firmwareDirs": ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"],
  "binaries": { "x86_64": "usr/bin/qemu-system-x86_64", "aarch64": "usr/bin/qemu-system-aarch64" },
  "packages": "$(tr '\n' ';' < "$tmp/.packages")"
}
JSON
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "installed QEMU $version into $dest"
