# Shared by the project's shell scripts. Sourced, never run.
# The cache lives outside the clone so that a fresh clone (CI) reuses what an
# earlier run built: QEMU, the guest kernel, the Python peer for the bench.
HARNESS_CACHE_DIR="${HARNESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/viommu-harness}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export HARNESS_CACHE_DIR

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# Progress of long steps (the kernel build, downloads, unpacking): a line at
# most every $HARNESS_PROGRESS_SECONDS (default 30) so a CI log shows the build
# moving and, when it hangs, where.
progress_every=${HARNESS_PROGRESS_SECONDS:-30}
# 95 -> 1m35s
elapsed_text() { if [ "$1" -lt 60 ]; then echo "${1}s"; else printf '%dm%02ds\n' $(($1 / 60)) $(($1 % 60)); fi; }

# run_progress WHAT LOG COUNT_RE NOUN CMD...: runs CMD; while it runs, logs at
# most every $progress_every s the time so far, WHAT, how many lines of LOG
# match the extended regexp COUNT_RE (as "N NOUN") and LOG's last line.
# LOG is a file CMD's output is appended to; or "-" for a command that names
# its own log on stderr as "(log: FILE)" (build-kernel.sh: its own text keys
# the cached kernel, so its progress is watched from here): CMD's stderr is
# then relayed as it comes. Returns CMD's status; a signal stops CMD too.
run_progress() {
  rp_what=$1 rp_log=$2 rp_re=$3 rp_noun=$4
  shift 4
  rp_err=
  if [ "$rp_log" = - ]; then
    rp_err=$(mktemp)
    "$@" 2>"$rp_err" &
  else
    "$@" >>"$rp_log" 2>&1 &
  fi
  rp_pid=$!
  trap 'kill "$rp_pid" 2>/dev/null; exit 130' INT
  trap 'kill "$rp_pid" 2>/dev/null; exit 143' TERM
  rp_start=$(date +%s)
  rp_last=$rp_start
  rp_shown=0
  while kill -0 "$rp_pid" 2>/dev/null; do
    # Short polls: a cached step (most runs) costs no more than it did.
    sleep 0.2
    [ -z "$rp_err" ] || rp_shown=$(relay_new "$rp_err" "$rp_shown")
    rp_now=$(date +%s)
    [ $((rp_now - rp_last)) -ge "$progress_every" ] || continue
    # Nothing to report on a step that has just ended (its last lines are relayed below).
    kill -0 "$rp_pid" 2>/dev/null || break
    rp_last=$rp_now
    rp_file=$rp_log
    [ -z "$rp_err" ] || rp_file=$(sed -n 's/.*(log: \(.*\))$/\1/p' "$rp_err" | tail -n 1)
    if [ -n "$rp_file" ] && [ -f "$rp_file" ]; then
      rp_n=$(grep -cE "$rp_re" "$rp_file" 2>/dev/null || true)
      rp_tail=$(tail -n 1 "$rp_file" 2>/dev/null | tr -d '\r' | cut -c1-120)
      log "$(elapsed_text $((rp_now - rp_start))) $rp_what: ${rp_n:-0} $rp_noun so far; last: $rp_tail"
    else
      log "$(elapsed_text $((rp_now - rp_start))) $rp_what (no log yet)"
    fi
  done
  rp_status=0
  wait "$rp_pid" || rp_status=$?
  trap - INT TERM
  if [ -n "$rp_err" ]; then
    relay_new "$rp_err" "$rp_shown" >/dev/null
    rm -f "$rp_err"
  fi
  return "$rp_status"
}

# relay_new FILE N: prints FILE's complete lines after the first N to stderr; echoes the new N.
relay_new() {
  rn_total=$(wc -l < "$1")
  [ "$rn_total" -le "$2" ] || sed -n "$(($2 + 1)),${rn_total}p" "$1" >&2
  echo "$rn_total"
}

# Runs apt-get/apt-cache against a Debian release with a private
# configuration: its own state, lists and archive cache under
# $HARNESS_CACHE_DIR/apt-<release>[-<arch>], and an empty dpkg status, so apt
# resolves the release's whole dependency closure without ever reading or
# writing the machine's own package database.
#
# Which release and architecture: $DEB_SUITE (default sid) and $DEB_ARCH
# (default: this machine's), read at each call, so one script can unpack
# sid's x86 QEMU, trixie's older one and an arm64 root side by side:
#   DEB_SUITE=trixie sid_unpack ROOT qemu-system-x86
#   DEB_ARCH=arm64 sid_unpack ROOT nodejs qemu-system-arm
# (The functions keep their sid_ names: sid is what they do unless told.)
# A Release file can count as expired against this machine's clock, hence
# Check-Valid-Until=false (the signature is still checked).
deb_suite() { echo "${DEB_SUITE:-sid}"; }
sid_apt_dir() { echo "$HARNESS_CACHE_DIR/apt-$(deb_suite)${DEB_ARCH:+-$DEB_ARCH}"; }
sid_apt_root=$(sid_apt_dir)
sid_apt_opts() {
  r=$(sid_apt_dir)
  printf '%s\n' \
    -o "Dir::State=$r/state" \
    -o "Dir::State::status=$r/state/status" \
    -o "Dir::State::Lists=$r/lists" \
    -o "Dir::Cache=$r/cache" \
    -o "Dir::Etc::SourceList=$r/sources.list" \
    -o "Dir::Etc::SourceParts=$r/no-parts" \
    -o "Dir::Etc::Preferences=$r/no-preferences" \
    -o "Dir::Etc::PreferencesParts=$r/no-parts" \
    -o "Acquire::Check-Valid-Until=false" \
    -o "APT::Install-Recommends=false" \
    -o "APT::Get::AllowUnauthenticated=false" \
    -o "Debug::NoLocking=1"
  if [ -n "${DEB_ARCH:-}" ]; then
    printf '%s\n' -o "APT::Architecture=$DEB_ARCH" -o "APT::Architectures=$DEB_ARCH"
  fi
}
sid_apt_init() {
  r=$(sid_apt_dir)
  # Empty folders for the parts apt would otherwise read from /etc/apt.
  mkdir -p "$r/state" "$r/lists/partial" "$r/cache/archives/partial" "$r/no-parts"
  : > "$r/state/status"
  echo "deb${DEB_ARCH:+ [arch=$DEB_ARCH]} $DEBIAN_MIRROR $(deb_suite) main" > "$r/sources.list"
  # The lists are refreshed at most once an hour: installs stay fast and
  # repeatable within a run, yet follow the release when asked again later.
  if [ -z "$(find "$r/lists" -name '*_Packages*' -mmin -60 2>/dev/null | head -n1)" ]; then
    log "refreshing Debian $(deb_suite)${DEB_ARCH:+ $DEB_ARCH} package lists"
    # shellcheck disable=SC2046
    apt-get $(sid_apt_opts) -q update >"$r/update.log" 2>&1 \
      || { tail -n 20 "$r/update.log" >&2; die "apt-get update for $(deb_suite) failed (log: $r/update.log)"; }
  fi
}
sid_apt_get() { # shellcheck disable=SC2046
  apt-get $(sid_apt_opts) "$@"; }
sid_apt_cache() { # shellcheck disable=SC2046
  apt-cache $(sid_apt_opts) "$@"; }

# Downloads PACKAGES and their dependency closure from sid and unpacks every
# .deb into ROOT with dpkg -x (no maintainer scripts run, nothing registered).
# Prints the "name version" of each unpacked package to ROOT/.packages.
sid_unpack() {
  root=$1; shift
  sid_apt_init
  sid_apt_root=$(sid_apt_dir)
  log "resolving and downloading from $(deb_suite)${DEB_ARCH:+ $DEB_ARCH}: $*"
  : >"$sid_apt_root/download.log"
  run_progress "downloading from $(deb_suite)" "$sid_apt_root/download.log" '^Get:' 'archives fetched' \
    sid_apt_get -q -y --download-only install "$@" \
    || { tail -n 20 "$sid_apt_root/download.log" >&2; die "apt-get could not download $* from $(deb_suite)"; }
  # Which debs belong to this closure: ask apt for the install plan again
  # (a simulation), then pick those files from the archive cache.
  mkdir -p "$root"
  : > "$root/.packages"
  sid_apt_get -q -s install "$@" 2>/dev/null | awk '/^Inst /{print $2, substr($3,2)}' > "$root/.plan"
  total=$(wc -l < "$root/.plan")
  unpack_last=$(date +%s)
  while read -r name version; do
    # Unpacking a few hundred packages takes minutes under load: say how far it got.
    now=$(date +%s)
    if [ $((now - unpack_last)) -ge "$progress_every" ]; then
      unpack_last=$now
      log "unpacking: $(wc -l < "$root/.packages") of $total packages, now $name"
    fi
    deb=$(ls "$sid_apt_root/cache/archives/${name}_"*.deb 2>/dev/null | while read -r f; do
      v=$(dpkg-deb -f "$f" Version); [ "$v" = "$version" ] && echo "$f"; done | head -n1)
    [ -n "$deb" ] || die "downloaded archive for $name $version not found"
    dpkg -x "$deb" "$root"
    echo "$name $version" >> "$root/.packages"
  done < "$root/.plan"
  rm -f "$root/.plan"
}

# Pick the Debian architecture name's library directory inside a sysroot.
multiarch() { dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu"; }

# Downloads just PACKAGE (no dependencies) from sid and unpacks it into ROOT:
# for pure-data or pure-Python packages whose dependencies the machine has.
sid_unpack_one() {
  root=$1 pkg=$2
  sid_apt_init
  sid_apt_root=$(sid_apt_dir)
  work="$sid_apt_root/one.$$"
  mkdir -p "$work" "$root"
  (cd "$work" && sid_apt_get -q download "$pkg" >"$sid_apt_root/download.log" 2>&1) \
    || { tail -n 20 "$sid_apt_root/download.log" >&2; rm -rf "$work"; die "apt-get could not download $pkg from $(deb_suite)"; }
  deb=$(ls "$work"/*.deb)
  dpkg -x "$deb" "$root"
  echo "$pkg $(dpkg-deb -f "$deb" Version)" >> "$root/.packages"
  rm -rf "$work"
}
