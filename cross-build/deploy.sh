#!/usr/bin/env bash
# Copy the right artifact to a board over ssh, install it and restart the service.
#
#   cross-build/deploy.sh [--dist DIR] [--no-restart] [--ssh-opt OPT]... user@host
#
# Asks the board for `uname -m` (aarch64 -> DIR/agentd-linux-arm64, x86_64 ->
# DIR/agentd-linux-amd64; DIR defaults to dist/), sends that file with packaging/install.sh,
# the example config and the units in one ssh stream to a temporary directory there, and runs
# `sudo install.sh --binary ...`: an upgrade replaces the binary atomically (the old one kept
# for `install.sh --rollback`), keeps /etc/agentd and /var/lib/agentd, and restarts agentd
# (--no-restart: install and enable only). Then prints `agentctl status`. Needs ssh access with
# sudo rights; the board needs bash, tar and systemd, nothing else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

dist=$repo/dist restart=1 target='' ssh_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
  --dist) dist=${2:?}; shift ;;
  --no-restart) restart=0 ;;
  --ssh-opt) ssh_opts+=("${2:?}"); shift ;;
  -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "deploy.sh: unknown option $1" >&2; exit 2 ;;
  *) target=$1 ;;
  esac
  shift
done
[ -n "$target" ] || { echo "usage: deploy.sh [--dist DIR] [--no-restart] user@host" >&2; exit 2; }

say() { printf '[deploy] %s\n' "$*" >&2; }
remote() { ssh "${ssh_opts[@]}" -o BatchMode=yes -o ConnectTimeout=15 "$target" "$@"; }

machine=$(remote uname -m) || { say "cannot reach $target over ssh"; exit 1; }
case "$machine" in
aarch64 | arm64) arch=arm64 ;;
x86_64 | amd64) arch=amd64 ;;
armv7l | armv6l)
  say "$target is $machine (32-bit ARM): agentd ships for aarch64 only; install a 64-bit OS"
  exit 1
  ;;
*) say "$target is $machine: there is no agentd artifact for it"; exit 1 ;;
esac
artifact=$dist/agentd-linux-$arch
[ -s "$artifact" ] || { say "$artifact is missing: cross-build/build.sh $arch"; exit 1; }
for f in install.sh agentd.toml systemd; do
  [ -e "$repo/packaging/$f" ] || { say "packaging/$f is missing"; exit 1; }
done

say "$target is $machine: installing $(basename "$artifact") ($(du -h "$artifact" | cut -f1))"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/packaging"
cp "$artifact" "$stage/agentd"
cp -r "$repo/packaging/install.sh" "$repo/packaging/agentd.toml" "$repo/packaging/systemd" \
  "$stage/packaging/"
start_opt=
[ "$restart" = 1 ] || start_opt=--no-start
# The remote temporary directory goes whatever happens; install.sh restarts a running agentd.
tar -C "$stage" -czf - . | remote "set -e
  d=\$(mktemp -d)
  trap 'rm -rf \"\$d\"' EXIT
  tar -xzf - -C \"\$d\"
  sudo bash \"\$d/packaging/install.sh\" --binary \"\$d/agentd\" $start_opt"
if [ "$restart" = 1 ]; then
  # bounded: a daemon that does not come up is reported, not waited on forever
  # shellcheck disable=SC2016 # expanded on the board
  remote 'for i in $(seq 1 30); do systemctl is-active --quiet agentd && break; sleep 1; done
    systemctl is-active agentd && sudo agentctl status' || {
    say "agentd is not active on $target: ssh $target journalctl -u agentd -n 50"
    exit 1
  }
fi
say "done: $target runs $(remote agentd version 2>/dev/null || echo '?')"
