#!/usr/bin/env bash
# Copy the right artifact to a board over ssh, install it and restart the service.
#
#   cross-build/deploy.sh [--dist DIR] [--no-restart] [--ssh-opt OPT]... user@host
#
# Asks the board for `uname -m` (aarch64 -> dist/agentd-linux-arm64, x86_64 ->
# dist/agentd-linux-amd64), copies that file, packaging/install.sh and packaging/systemd/ into a
# temporary directory there, runs install.sh with sudo (an upgrade keeps /etc/agentd and
# /var/lib/agentd), restarts agentd and prints `agentctl status`. Needs ssh access with sudo
# rights on the board; nothing but a POSIX shell, tar and systemd on the board itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

dist=$repo/dist restart=1 target= ssh_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
  --dist) dist=${2:?}; shift ;;
  --no-restart) restart=0 ;;
  --ssh-opt) ssh_opts+=("${2:?}"); shift ;;
  -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
*) say "$target is $machine: no agentd artifact for it"; exit 1 ;;
esac
artifact=$dist/agentd-linux-$arch
[ -s "$artifact" ] || { say "$artifact is missing: cross-build/build.sh $arch"; exit 1; }
[ -x "$repo/packaging/install.sh" ] || { say "packaging/install.sh is missing"; exit 1; }

say "$target is $machine: installing $(basename "$artifact") ($(du -h "$artifact" | cut -f1))"
# One ssh stream: the artifact and the installer in a tarball, unpacked into a temporary
# directory that is removed whatever happens.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/packaging"
cp "$artifact" "$stage/agentd"
cp -r "$repo/packaging/install.sh" "$repo/packaging/systemd" "$stage/packaging/"
restart_cmd=":"
if [ "$restart" = 1 ]; then
  restart_cmd='sudo systemctl daemon-reload && sudo systemctl enable agentd >/dev/null 2>&1; sudo systemctl restart agentd && sleep 1 && systemctl is-active agentd && sudo agentctl status'
fi
tar -C "$stage" -czf - . | remote "set -e
  d=\$(mktemp -d)
  trap 'rm -rf \"\$d\"' EXIT
  tar -xzf - -C \"\$d\"
  sudo sh \"\$d/packaging/install.sh\" --binary \"\$d/agentd\"
  $restart_cmd"
say "done: $target runs $(remote /usr/local/bin/agentd version 2>/dev/null || echo '?')"
