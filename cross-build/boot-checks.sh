#!/bin/sh
# Runs inside the root booted by `systemd-nspawn --boot` (cross-build/verify.sh installs it as a
# unit): drives agentd through systemd, writes PASS/FAIL lines to $1/results and powers off.
# Every wait is bounded; poweroff happens whatever the outcome.
out=${1:-/verify}
exec >"$out/checks.log" 2>&1
set -u
: >"$out/results"
touch "$out/started"
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
pass() { echo "PASS $*" >>"$out/results"; echo "PASS $*"; }
fail() { echo "FAIL $*" >>"$out/results"; echo "FAIL $*"; }
skip() { echo "SKIP $*" >>"$out/results"; echo "SKIP $*"; }
finish() {
  journalctl --no-pager -o short-monotonic -u agentd >"$out/journal.txt" 2>&1
  systemctl status --no-pager agentd >"$out/status.txt" 2>&1
  touch "$out/done"
  sync
  systemctl --no-block poweroff
  exit 0
}
trap finish EXIT
# the monotonic clock in microseconds, from systemd's own timestamps
prop() { systemctl show -p "$1" --value agentd; }
wait_state() { # STATE SECONDS
  i=0
  while [ "$(systemctl is-active agentd)" != "$1" ]; do
    i=$((i + 1))
    [ "$i" -gt $(($2 * 5)) ] && return 1
    sleep 0.2
  done
}

echo "system: $(uname -m), $(systemctl --version | head -n 1), state $(systemctl is-system-running)"
if timeout 300 systemctl enable --now agentd; then
  pass "systemctl enable --now agentd"
else
  fail "systemctl enable --now agentd failed"
fi
if wait_state active 300; then
  start=$(prop ExecMainStartTimestampMonotonic)
  ready=$(prop ActiveEnterTimestampMonotonic)
  secs=$(awk -v a="$start" -v b="$ready" 'BEGIN { printf "%.2f", (b - a) / 1e6 }')
  echo "$secs" >"$out/ready-seconds"
  pass "agentd active (Type=$(prop Type), READY ${secs}s after exec)"
else
  fail "agentd not active within 300s: $(systemctl is-active agentd)"
  exit 1
fi
# STATUS= and WATCHDOG=1 come from the one-file child process (NotifyAccess=all)
i=0
while [ -z "$(prop StatusText)" ] && [ "$i" -lt 100 ]; do i=$((i + 1)); sleep 0.2; done
if [ -n "$(prop StatusText)" ]; then
  pass "STATUS= from the daemon: $(prop StatusText)"
else
  fail "no STATUS= text from the daemon within 20s"
fi
if [ "$(prop WatchdogUSec)" != 0 ] && [ "$(prop WatchdogUSec)" != infinity ]; then
  # systemd stamps the watchdog when the service starts and again on every WATCHDOG=1
  w0=$(prop WatchdogTimestampMonotonic)
  i=0
  while [ "$(prop WatchdogTimestampMonotonic)" = "$w0" ] && [ "$i" -lt 300 ]; do i=$((i + 1)); sleep 0.2; done
  if [ "$(prop WatchdogTimestampMonotonic)" != "$w0" ]; then
    pass "WATCHDOG=1 received (WatchdogSec $(prop WatchdogUSec))"
  else
    fail "no WATCHDOG=1 within 60s (WatchdogSec $(prop WatchdogUSec))"
  fi
fi
if timeout 60 agentctl status >"$out/agentctl-status.txt" 2>&1; then
  pass "agentctl status: $(head -n 1 "$out/agentctl-status.txt")"
elif grep -q "control plane is not built yet" "$out/agentctl-status.txt"; then
  skip "agentctl status: this build has no control plane yet"
else
  fail "agentctl status -> $(head -c 300 "$out/agentctl-status.txt")"
fi
pid=$(prop MainPID)
if timeout 120 systemctl reload agentd; then
  if [ "$(systemctl is-active agentd)" = active ] && [ "$(prop MainPID)" = "$pid" ]; then
    pass "systemctl reload agentd (same pid $pid, still active)"
  else
    fail "after reload: $(systemctl is-active agentd), pid $(prop MainPID) (was $pid)"
  fi
else
  fail "systemctl reload agentd failed"
fi
if timeout 180 systemctl stop agentd; then
  result=$(prop Result)
  status=$(prop ExecMainStatus)
  if [ "$result" = success ] && [ "$status" = 0 ]; then
    pass "systemctl stop agentd (Result=$result, exit $status, $(prop NRestarts) restarts)"
  else
    fail "systemctl stop agentd: Result=$result, exit status $status"
  fi
else
  fail "systemctl stop agentd did not finish within 180s"
fi
journalctl --no-pager -o cat -u agentd >"$out/journal-cat.txt" 2>&1
# systemd logs "Started" for a Type=notify unit only once READY=1 arrived.
for pattern in "Started agentd" "agentd: agentd .* started" "Reloaded agentd" "agentd: stopping" \
  "agentd: stopped" "Stopped agentd|agentd.service: Deactivated successfully"; do
  if grep -qE "$pattern" "$out/journal-cat.txt"; then
    pass "journal: $pattern"
  else
    fail "journal: no line matching '$pattern'"
  fi
done
if grep -q Traceback "$out/journal-cat.txt"; then fail "journal: a traceback"; fi
