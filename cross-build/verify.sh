#!/usr/bin/env bash
# Prove an artifact works on its architecture before anyone copies it to a board.
#
#   cross-build/verify.sh dist/agentd-linux-arm64 [--only elf|user|boot] [--results DIR]
#
#   elf   the file is an ELF 64-bit little-endian executable for the expected architecture
#         (from the name agentd-linux-<arch>, else --arch), and the libpython and libssl it
#         bundles (their versions printed, checked against <artifact>.packages if present);
#   user  in a Debian bookworm root of that architecture with no Python (run through
#         qemu-user via binfmt_misc when foreign): `agentd version`, `check-config` (good and
#         bad file), `plugins`, the daemon for some ticks with temporary state/runtime dirs,
#         `agentctl status --json` through its own socket, a clean exit 0 on SIGTERM;
#   boot  the same root with systemd booted by `systemd-nspawn --boot`: packaging/install.sh
#         --root, then a oneshot unit inside runs `systemctl enable --now agentd`, waits for
#         active, `agentctl status`, `systemctl reload`, `systemctl stop`, reads the journal,
#         writes the results to a bind-mounted directory and powers the machine off.
#
# Exit status: 0 all run stages passed; 1 a check failed; 77 a stage could not run here (the
# reason is printed on a line starting with "SKIP:"). Every wait is bounded
# (AGENTD_VERIFY_BOOT_TIMEOUT, default 900 s for the whole boot) and no container or process is
# left behind. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cross-build/lib.sh
. "$here/lib.sh"
LOG_TAG=verify

artifact='' only='' arch='' results=''
while [ $# -gt 0 ]; do
  case "$1" in
  --only) only=${2:?}; shift ;;
  --only=*) only=${1#*=} ;;
  --arch) arch=${2:?}; shift ;;
  --arch=*) arch=${1#*=} ;;
  --results) results=${2:?}; shift ;;
  --results=*) results=${1#*=} ;;
  -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) die "unknown option $1" ;;
  *) artifact=$1 ;;
  esac
  shift
done
[ -n "$artifact" ] || die "usage: verify.sh ARTIFACT [--only elf|user|boot] [--arch amd64|arm64]"
[ -f "$artifact" ] || die "$artifact: no such file (build it: cross-build/build.sh arm64)"
artifact=$(cd "$(dirname "$artifact")" && pwd)/$(basename "$artifact")
if [ -z "$arch" ]; then
  case "$(basename "$artifact")" in
  *-arm64 | *-aarch64) arch=arm64 ;;
  *-amd64 | *-x86_64) arch=amd64 ;;
  *) die "cannot tell the architecture from the name $(basename "$artifact"): pass --arch" ;;
  esac
fi
case "$only" in "" | elf | user | boot) ;; *) die "--only: elf, user or boot" ;; esac
BOOT_TIMEOUT=${AGENTD_VERIFY_BOOT_TIMEOUT:-900}
INSTALL=${AGENTD_VERIFY_INSTALL:-$repo/packaging/install.sh}
results=${results:-$(mktemp -d "${TMPDIR:-/tmp}/agentd-verify.XXXXXX")}
mkdir -p "$results"

FAILED=0 SKIPPED=0
pass() { log "PASS $*"; echo "PASS $*" >>"$results/summary"; }
fail() {
  log "FAIL $*"
  echo "FAIL $*" >>"$results/summary"
  FAILED=1
}
skip() {
  echo "SKIP: $*"
  echo "SKIP $*" >>"$results/summary"
  SKIPPED=1
}
figure() { log "FIGURE $*"; echo "$*" >>"$results/figures"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# --- elf -------------------------------------------------------------------------------------------

check_elf() {
  local hdr want machine
  hdr=$(od -An -tx1 -N20 "$artifact" | tr -d ' \n')
  case "$arch" in arm64) want=b700 ;; amd64) want=3e00 ;; *) die "unsupported arch $arch" ;; esac
  machine=${hdr:36:4}
  if [ "${hdr:0:8}" != 7f454c46 ]; then
    fail "elf: $artifact is not an ELF file"
  elif [ "${hdr:8:4}" != 0201 ]; then
    fail "elf: not a 64-bit little-endian ELF (class/data bytes ${hdr:8:4})"
  elif [ "${hdr:32:4}" != 0200 ] && [ "${hdr:32:4}" != 0300 ]; then
    fail "elf: not an executable (e_type ${hdr:32:4})"
  elif [ "$machine" != "$want" ]; then
    fail "elf: machine ${machine} is not $arch ($want)"
  else
    pass "elf: ELF 64-bit LSB executable, $arch${FILE_DESC:+ ($(file -b "$artifact" | cut -d, -f1-2))}"
  fi
  figure "artifact_bytes=$(stat -c %s "$artifact")"
}

# --- bundle: what libpython and libssl the artifact carries ----------------------------------------

# The versions the bundled libraries announce in their own bytes, and the Debian packages the
# build's manifest (<artifact>.packages) says they came from: printed, so a builder that lags
# behind on security updates shows, and checked against each other.
upstream() { # a Debian version without epoch and revision: 1:1.2.13.dfsg-1+deb12u1 -> 1.2.13.dfsg
  local v=${1#*:}
  echo "${v%-*}"
}

check_bundle() {
  local versions py ssl manifest deb_py='' deb_ssl='' ok=1
  if ! command -v python3 >/dev/null; then
    skip "bundle: no python3 on this machine to read the artifact's archive"
    return
  fi
  if ! versions=$(python3 "$here/manifest.py" versions "$artifact" 2>&1); then
    fail "bundle: cannot read the bundled libraries: $versions"
    return
  fi
  py=$(sed -n 's/^libpython: //p' <<<"$versions")
  ssl=$(sed -n 's/^libssl: //p' <<<"$versions")
  figure "bundled_libpython=${py:-none}"
  figure "bundled_libssl=${ssl:-none}"
  manifest=$artifact.packages
  if [ -f "$manifest" ]; then
    deb_py=$(awk '$1 == "deb" && $2 ~ /^libpython3\.[0-9]+$/ { print $3 }' "$manifest")
    deb_ssl=$(awk '$1 == "deb" && $2 ~ /^libssl[0-9]/ { print $3 }' "$manifest")
    figure "manifest_libpython=${deb_py:-none}"
    figure "manifest_libssl=${deb_ssl:-none}"
    # the manifest must describe this artifact: its upstream versions are the ones inside
    if [ -n "$deb_py" ] && [[ " $py " != *" $(upstream "$deb_py") "* ]]; then ok=0; fi
    if [ -n "$deb_ssl" ] && [[ "$ssl" != *"OpenSSL $(upstream "$deb_ssl") "* ]]; then ok=0; fi
    if [ -z "$deb_py" ] || [ -z "$deb_ssl" ]; then ok=0; fi
  fi
  if [ -z "$py" ] || [ -z "$ssl" ]; then
    fail "bundle: libpython (${py:-missing}) or libssl/libcrypto (${ssl:-missing}) not found in the archive"
  elif [ "$ok" = 0 ]; then
    fail "bundle: $(basename "$manifest") says libpython ${deb_py:-?}, libssl ${deb_ssl:-?}, but the artifact holds $py; $ssl"
  elif [ -n "$deb_py" ]; then
    pass "bundle: libpython $deb_py ($py), libssl $deb_ssl ($ssl)"
  else
    pass "bundle: $py; $ssl (no $(basename "$manifest") beside it to name the Debian packages)"
  fi
}

# --- user: the artifact in a bare root, through binfmt --------------------------------------------

wait_for() { # SECONDS COMMAND...: poll every 0.2 s
  local deadline
  deadline=$(awk -v n="$(now)" -v s="$1" 'BEGIN { printf "%.1f", n + s }')
  shift
  while ! "$@"; do
    if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then return 1; fi
    sleep 0.2
  done
}

check_user() {
  local root out rc pid t0 sock ticks status_rc
  root=$(mktemp -d "$WORK_DIR/verify-user-$arch.XXXXXX")
  unpack_root "$ROOT_TARBALL" "$root"
  mount_chroot_fs "$root"
  install -m 0755 "$artifact" "$root/usr/local/bin/agentd"
  ln -sf agentd "$root/usr/local/bin/agentctl"
  chroot_env

  t0=$(now)
  if out=$(timeout 120 chroot "$root" "${CHROOT_ENV[@]}" /usr/local/bin/agentd version 2>&1) &&
    [[ "$out" == "agentd "[0-9]* ]]; then
    pass "user: agentd version -> $out ($(since "$t0")s)"
    figure "version_seconds=$(since "$t0")"
  else
    fail "user: agentd version -> $out"
  fi

  if out=$(timeout 120 chroot "$root" "${CHROOT_ENV[@]}" /usr/local/bin/agentd check-config 2>&1) &&
    [ "$out" = "ok: embedded default" ]; then
    pass "user: agentd check-config (embedded default) -> ok"
  else
    fail "user: agentd check-config -> $out"
  fi

  printf '[agent]\ninterval = -1\n' >"$root/tmp/bad.toml"
  rc=0
  out=$(timeout 120 chroot "$root" "${CHROOT_ENV[@]}" /usr/local/bin/agentd check-config /tmp/bad.toml 2>&1) || rc=$?
  if [ "$rc" = 1 ] && [[ "$out" == *agent.interval* ]] && [[ "$out" != *Traceback* ]]; then
    pass "user: check-config on a bad file -> exit 1, one line: $out"
  else
    fail "user: check-config on a bad file -> exit $rc: $out"
  fi

  if out=$(timeout 120 chroot "$root" "${CHROOT_ENV[@]}" /usr/local/bin/agentd plugins --json 2>&1) &&
    [[ "$out" == *'"system"'* ]] && [[ "$out" == *'"threshold"'* ]]; then
    pass "user: agentd plugins lists the built-ins"
  else
    fail "user: agentd plugins --json -> $out"
  fi

  # The daemon: default config, 0.25 s ticks, a heartbeat line every second.
  mkdir -p "$root/tmp/v"
  timeout 120 chroot "$root" "${CHROOT_ENV[@]}" /usr/local/bin/agentd print-default-config |
    sed -e 's/^interval = .*/interval = 0.25/' -e 's/^heartbeat = .*/heartbeat = 1/' >"$root/tmp/v/agentd.toml"
  sock=$root/tmp/v/run/agentd.sock
  t0=$(now)
  # exec: $! is then the agentd bootloader itself (through binfmt), the process systemd would see.
  (exec chroot "$root" "${CHROOT_ENV[@]}" TMPDIR=/tmp /usr/local/bin/agentd run -c /tmp/v/agentd.toml \
    --state-dir /tmp/v/state --runtime-dir /tmp/v/run >"$results/daemon.log" 2>&1) &
  pid=$!
  if wait_for 180 grep -q ' started (pid' "$results/daemon.log"; then
    figure "user_started_seconds=$(since "$t0")"
    pass "user: daemon started ($(since "$t0")s, $([ "$arch" = "$(host_arch)" ] && echo native || echo emulated))"
  else
    fail "user: daemon did not log 'started' within 180s"
  fi
  if wait_for 60 grep -qE 'heartbeat: ([3-9]|[1-9][0-9]+) ticks' "$results/daemon.log"; then
    ticks=$(grep -oE 'heartbeat: [0-9]+ ticks' "$results/daemon.log" | tail -n 1)
    pass "user: the loop ticks ($ticks)"
  else
    fail "user: fewer than 3 ticks within 60s of start"
  fi
  # the control socket, if this build has a control plane (agentctl says so when it has not)
  wait_for 30 test -S "$sock" || true
  status_rc=0
  out=$(timeout 60 chroot "$root" "${CHROOT_ENV[@]}" /usr/local/bin/agentctl --socket /tmp/v/run/agentd.sock \
    status --json 2>&1) || status_rc=$?
  if [[ "$out" == *"control plane is not built yet"* ]]; then # a build from before it landed
    skip "user: agentctl status --json: this build has no control plane yet ($out)"
  elif [ "$status_rc" = 0 ] && printf '%s' "$out" | python3 -c 'import json,sys; json.load(sys.stdin)' 2>/dev/null; then
    pass "user: agentctl status --json through $sock answers JSON"
  else
    fail "user: agentctl status --json -> exit $status_rc: $(printf '%s' "$out" | head -c 400)"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  t0=$(now)
  rc=0
  if wait_for 60 not_running "$pid"; then
    wait "$pid" || rc=$?
    if [ "$rc" = 0 ] && grep -q 'agentd: stopped' "$results/daemon.log"; then
      pass "user: SIGTERM -> clean stop, exit 0 ($(since "$t0")s)"
    else
      fail "user: SIGTERM -> exit $rc; last lines: $(tail -n 3 "$results/daemon.log" | tr '\n' '|')"
    fi
  else
    kill -KILL "$pid" 2>/dev/null || true
    fail "user: still running 60s after SIGTERM"
  fi
  if grep -q Traceback "$results/daemon.log"; then fail "user: a traceback in the daemon log"; fi
  kill_root_processes "$root"
  unmount_all
  remove_dir "$root"
}

# shellcheck disable=SC2317 # called through wait_for
not_running() { ! kill -0 "$1" 2>/dev/null; }

# --- boot: systemd in nspawn -----------------------------------------------------------------------

# The container's init carries our tag in its environment: if nspawn was killed (timeout) and
# left it running, SIGKILL to that PID 1 ends its whole PID namespace.
kill_container() {
  local e p
  for e in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' <"$e"; } 2>/dev/null | grep -qx "AGENTD_VERIFY_TAG=$1"; then
      p=${e#/proc/}
      p=${p%/environ}
      log "killing container init $p left running"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

check_boot() {
  local root res t0 rc=0 reason tag
  if ! command -v systemd-nspawn >/dev/null; then
    (apt_install systemd-container) || true
  fi
  if ! command -v systemd-nspawn >/dev/null; then
    skip "boot: systemd-nspawn is not installed and could not be (apt-get install systemd-container)"
    return
  fi
  if [ ! -x "$INSTALL" ]; then
    skip "boot: $INSTALL is not in this checkout yet"
    return
  fi
  root=$(mktemp -d "$WORK_DIR/verify-boot-$arch.XXXXXX")
  res=$results/boot
  mkdir -p "$res"
  chmod 0777 "$res"
  unpack_root "$ROOT_TARBALL" "$root"
  if ! "$INSTALL" --root "$root" --binary "$artifact" >"$res/install.log" 2>&1; then
    fail "boot: $INSTALL --root failed: $(tail -n 3 "$res/install.log" | tr '\n' '|')"
    remove_dir "$root"
    return
  fi
  # The checks run inside, from a unit, because the host has no machined/bus to drive a
  # container from outside; it powers the machine off when done.
  install -m 0755 "$here/boot-checks.sh" "$root/usr/local/sbin/agentd-boot-checks"
  cat >"$root/etc/systemd/system/agentd-boot-checks.service" <<'EOF'
[Unit]
Description=agentd verification inside the booted root (cross-build/verify.sh)
After=basic.target dbus.service
Wants=dbus.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/agentd-boot-checks /verify
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/agentd-boot-checks.service \
    "$root/etc/systemd/system/multi-user.target.wants/agentd-boot-checks.service"
  tag=$$-$RANDOM$RANDOM
  t0=$(now)
  log "booting the $arch root with systemd-nspawn (bounded: ${BOOT_TIMEOUT}s)"
  timeout --kill-after=20 "$BOOT_TIMEOUT" systemd-nspawn --quiet -D "$root" --boot --register=no --keep-unit \
    --console=read-only --resolv-conf=off --timezone=off --link-journal=no \
    --bind="$res:/verify" --machine="agentd-verify-$$" --setenv="AGENTD_VERIFY_TAG=$tag" \
    >"$res/console.log" 2>&1 || rc=$?
  kill_container "$tag"
  kill_root_processes "$root"
  figure "boot_cycle_seconds=$(since "$t0")"
  if [ -f "$res/ready-seconds" ]; then figure "boot_ready_seconds=$(cat "$res/ready-seconds")"; fi
  if [ ! -f "$res/started" ]; then
    if grep -q 'running in system mode' "$res/console.log"; then
      fail "boot: systemd came up but the check unit never ran (nspawn exit $rc; see $res/console.log)"
    else
      reason=$(grep -v '^$' "$res/console.log" | tail -n 3 | tr '\n' ' ')
      skip "boot: systemd-nspawn could not boot the root here (exit $rc): ${reason:-no output}"
    fi
  elif [ ! -f "$res/done" ]; then
    fail "boot: the checks did not finish within ${BOOT_TIMEOUT}s (nspawn exit $rc)"
  fi
  if [ -f "$res/results" ]; then
    while IFS= read -r line; do
      case "$line" in
      PASS*) pass "boot: ${line#PASS }" ;;
      FAIL*) fail "boot: ${line#FAIL }" ;;
      SKIP*) skip "boot: ${line#SKIP }" ;;
      esac
    done <"$res/results"
  fi
  remove_dir "$root"
}

# --- main ------------------------------------------------------------------------------------------

trap cleanup EXIT
trap 'exit 130' INT TERM
FILE_DESC=
command -v file >/dev/null && FILE_DESC=1
log "verifying $artifact ($arch); results in $results"
: >"$results/summary"
: >"$results/figures"
if [ -z "$only" ] || [ "$only" = elf ]; then
  check_elf
  if [ "$FAILED" = 0 ]; then check_bundle; fi
fi
if [ "$FAILED" = 0 ] && { [ -z "$only" ] || [ "$only" != elf ]; }; then
  [ "$(id -u)" = 0 ] || die "the user and boot stages need root (chroot, mounts, nspawn)"
  ensure_host_tools "$arch"
  root_tarball boot "$arch"
  if [ -z "$only" ] || [ "$only" = user ]; then check_user; fi
  if [ -z "$only" ] || [ "$only" = boot ]; then check_boot; fi
fi
log "summary: $(grep -c '^PASS' "$results/summary") passed, $(grep -c '^FAIL' "$results/summary") failed, $(grep -c '^SKIP' "$results/summary") skipped"
if [ "$FAILED" != 0 ]; then exit 1; fi
if [ "$SKIPPED" != 0 ]; then exit 77; fi
exit 0
