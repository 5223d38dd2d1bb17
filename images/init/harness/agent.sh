# The guest side of the harness's command protocol (sourced by stage2; busybox
# sh). One request or reply per line, fields separated by one space, every
# payload base64 without line breaks, so no byte of a command's output can be
# taken for framing:
#
#   host → guest  PING <id>
#                 RUN <id> <timeout-s> <command> [<stdin>]
#   guest → host  HELLO <protocol> <kernel-release>      (each time the port opens)
#                 PONG <id> <uptime-s>
#                 RES <id> <status> <timed-out 0|1> <elapsed-cs> <stdout> <stderr>
#                 ERR <id> <message>
#
# Commands run one at a time, under `sh`, in /, with stdin from the request (or
# empty) and a SIGKILL after <timeout-s>; the agent stays usable after one
# hangs. Harness tests see it through harness/guest/agent.ts.
AGENT_PROTO=1
: "${BB:=/bin/busybox}"

say() { echo "harness-init: $*" > /dev/console 2>/dev/null; }

# Prints the device of the agent port: $1 is a path (/dev/ttyS1) or the name
# of a virtserialport. Ports are announced by the host after the driver
# probes, so the name may show up a moment after init starts: look for up to
# 10 s.
agent_find_port() {
  case $1 in /dev/*) [ -c "$1" ] && { echo "$1"; return 0; }; return 1 ;; esac
  tries=0
  while [ "$tries" -lt 200 ]; do
    for f in /sys/class/virtio-ports/*/name; do
      [ -r "$f" ] || continue
      read -r n < "$f" 2>/dev/null || continue
      if [ "$n" = "$1" ]; then
        d=${f%/name}
        echo "/dev/${d##*/}"
        return 0
      fi
    done
    [ "$tries" -eq 0 ] && say "waiting for agent port '$1'"
    tries=$((tries + 1))
    "$BB" sleep 0.05
  done
  return 1
}

# /proc/uptime in centiseconds ("12.34" → 1234; the 1 prefix keeps a leading
# zero of the fraction from reading as octal).
agent_uptime_cs() {
  read -r up _ < /proc/uptime
  echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

agent_b64() { "$BB" base64 -w 0; }

agent_run() { # id timeout-s command-b64 stdin-b64
  d=$agent_work/$1
  mkdir -p "$d"
  if ! printf '%s' "$3" | "$BB" base64 -d > "$d/cmd" 2>/dev/null; then
    printf 'ERR %s %s\n' "$1" "$(printf 'command of request %s is not base64' "$1" | agent_b64)" >&3
    rm -rf "$d"; return
  fi
  if [ -n "$4" ]; then printf '%s' "$4" | "$BB" base64 -d > "$d/in" 2>/dev/null; else : > "$d/in"; fi
  t0=$(agent_uptime_cs)
  # fd 3 (the port) is closed for the command: nothing it starts can write
  # into the protocol or keep the port open.
  (cd / && exec "$BB" timeout -s KILL "$2" "$BB" sh "$d/cmd") < "$d/in" > "$d/out" 2> "$d/err" 3>&-
  st=$?
  t1=$(agent_uptime_cs)
  el=$((t1 - t0))
  to=0
  [ "$st" -eq 137 ] && [ "$el" -ge $(( $2 * 100 )) ] && to=1
  printf 'RES %s %s %s %s %s %s\n' "$1" "$st" "$to" "$el" \
    "$(agent_b64 < "$d/out")" "$(agent_b64 < "$d/err")" >&3
  rm -rf "$d"
}

agent_handle() {
  set -f
  # shellcheck disable=SC2086
  set -- $1
  set +f
  case ${1:-} in
    PING) printf 'PONG %s %s\n' "${2:-0}" "$(cut -d' ' -f1 /proc/uptime)" >&3 ;;
    RUN)
      case ${3:-x} in
        *[!0-9]*|'') printf 'ERR %s %s\n' "${2:-0}" "$(printf 'bad timeout %s' "${3:-}" | agent_b64)" >&3 ;;
        *) agent_run "$2" "$3" "${4:-}" "${5:-}" ;;
      esac ;;
    '') ;;
    *) printf 'ERR %s %s\n' "${2:-0}" "$(printf 'unknown request %s' "$1" | agent_b64)" >&3 ;;
  esac
}

agent_main() {
  dev=$(agent_find_port "$1") || { say "FATAL: no agent port '$1' (see /sys/class/virtio-ports)"; return 1; }
  case $dev in /dev/tty*) "$BB" stty -F "$dev" raw -echo -icrnl -onlcr 115200 ;; esac
  agent_work=/run/harness-agent
  mkdir -p "$agent_work"
  say "agent listening on $dev (port $1)"
  while :; do
    exec 3<>"$dev" || return 1
    # Blocks until the host side is connected (virtio-console), then tells
    # the host who it talks to.
    printf 'HELLO %s %s\n' "$AGENT_PROTO" "$(uname -r)" >&3
    while IFS= read -r line <&3; do agent_handle "$line"; done
    # EOF: the host closed its end; reopen and wait for the next one.
    exec 3>&-
  done
}
