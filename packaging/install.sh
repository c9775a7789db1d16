#!/usr/bin/env bash
# Install, upgrade, roll back or remove agentd (the one-file binary and its systemd units).
#
#   packaging/install.sh [--binary FILE] [--prefix DIR] [--root DIR] [--socket] [--no-start]
#   packaging/install.sh --rollback [--prefix DIR] [--root DIR] [--no-start]
#   packaging/install.sh --uninstall [--purge] [--prefix DIR] [--root DIR]
#
#   --binary FILE  the agentd executable to install (default: dist/agentd of this checkout)
#   --prefix DIR   where it goes: DIR/bin/agentd and DIR/bin/agentctl -> agentd
#                  (default: /usr/local; the unit's paths follow it)
#   --root DIR     install into a mounted image or chroot instead of this system: files go
#                  under DIR, the user and group are created in DIR/etc, the unit is enabled
#                  with a symlink, and nothing is started
#   --socket       also install agentd.socket (socket activation of the control socket)
#   --no-start     enable, but do not start or restart, the service
#   --rollback     put back the binary the last install replaced (kept as agentd.previous)
#   --uninstall    stop and disable the service, remove the binary, agentctl and the units;
#                  the config (/etc/agentd) and the state (/var/lib/agentd) stay
#   --purge        with --uninstall: also remove the config, the state, and the user/group
#
# Installing over an existing install is an upgrade: the binary is replaced atomically (the
# old one kept for --rollback), config and state are kept, a running service is restarted.
set -euo pipefail

usage() { sed -n '4,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
action=install
binary="$here/../dist/agentd"
prefix=/usr/local
root=
socket=no
start=yes
purge=no
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a file}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --socket) socket=yes; shift ;;
    --no-start) start=no; shift ;;
    --rollback) action=rollback; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done
[ "$purge" = no ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"
[ "$(id -u)" = 0 ] || die "run as root (it creates a system user and installs units)"
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path: $prefix" ;; esac
if [ -n "$root" ]; then
  [ -d "$root" ] || die "--root $root: no such directory"
  root=$(cd "$root" && pwd)
  [ "$root" = / ] && root=
fi

bindir="$prefix/bin"
unitdir=/etc/systemd/system
confdir=/etc/agentd
statedir=/var/lib/agentd
user=agentd
group=agentd

# systemctl only for a live system with systemd running; an image gets plain symlinks
live_systemd() { [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }
has_user() {
  if [ -n "$root" ]; then grep -q "^$1:" "$root/etc/passwd" 2>/dev/null; else getent passwd "$1" >/dev/null; fi
}
has_group() {
  if [ -n "$root" ]; then grep -q "^$1:" "$root/etc/group" 2>/dev/null; else getent group "$1" >/dev/null; fi
}
rootopt() { if [ -n "$root" ]; then printf -- '--root\n%s\n' "$root"; fi; }

# an empty --root (a directory about to become an image) has no account files for
# useradd/groupadd --root to lock and edit: start them with root's entries, as a base system has
prepare_root() {
  [ -n "$root" ] || return 0
  install -d -m 0755 "$root/etc"
  [ -e "$root/etc/passwd" ] || { echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"; chmod 0644 "$root/etc/passwd"; }
  [ -e "$root/etc/group" ] || { echo "root:x:0:" > "$root/etc/group"; chmod 0644 "$root/etc/group"; }
  [ -e "$root/etc/shadow" ] || { echo "root:*:1::::::" > "$root/etc/shadow"; chmod 0640 "$root/etc/shadow"; }
  [ -e "$root/etc/gshadow" ] || { echo "root:*::" > "$root/etc/gshadow"; chmod 0640 "$root/etc/gshadow"; }
}

create_user() {
  local opts=()
  prepare_root
  mapfile -t opts < <(rootopt)
  if ! has_group "$group"; then
    groupadd "${opts[@]}" --system "$group"
    say "created group $group"
  fi
  if ! has_user "$user"; then
    local shell=/usr/sbin/nologin
    [ -x "$root/usr/sbin/nologin" ] || { [ -x "$root/sbin/nologin" ] && shell=/sbin/nologin; }
    useradd "${opts[@]}" --system --gid "$group" --no-create-home --home-dir "$statedir" \
      --shell "$shell" --comment "agentd edge agent" "$user"
    say "created user $user"
  fi
}

remove_user() {
  local opts=()
  mapfile -t opts < <(rootopt)
  if has_user "$user"; then userdel "${opts[@]}" "$user"; say "removed user $user"; fi
  if has_group "$group"; then groupdel "${opts[@]}" "$group"; say "removed group $group"; fi
}

# the unit as shipped, with its /usr/local/bin paths moved to the prefix
install_unit() {
  local src=$1 dest=$2
  sed "s#/usr/local/bin/#$bindir/#g" "$src" > "$dest.tmp"
  chmod 0644 "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
}

enable_unit() {
  local unit=$1 target=$2
  if live_systemd; then
    systemctl enable --quiet "$unit"
  else
    mkdir -p "$root$unitdir/$target.wants"
    ln -sfn "$unitdir/$unit" "$root$unitdir/$target.wants/$unit"
  fi
}

disable_unit() {
  local unit=$1 target=$2
  if live_systemd; then
    systemctl disable --quiet --now "$unit" 2>/dev/null || true
  fi
  rm -f "$root$unitdir/$target.wants/$unit"
}

restart_service() {
  if ! live_systemd; then
    [ -n "$root" ] || say "systemd is not running here: start agentd with '$bindir/agentd run'"
    return 0
  fi
  systemctl daemon-reload
  [ "$start" = yes ] || return 0
  if systemctl is-active --quiet agentd.service; then
    systemctl restart agentd.service
    say "restarted agentd"
  else
    systemctl start agentd.service
    say "started agentd"
  fi
}

do_install() {
  [ -f "$binary" ] || die "no binary at $binary (build it: packaging/build.sh)"
  [ -x "$binary" ] || die "$binary is not executable"
  local version
  # an image for another CPU (--root) may hold a binary this machine cannot run
  if ! version=$("$binary" version 2>/dev/null); then
    [ -n "$root" ] || die "$binary does not run here (wrong CPU or glibc?)"
    version="agentd (for another machine)"
  fi
  create_user
  install -d -m 0755 "$root$bindir"
  # replace atomically; keep the one we replace for --rollback
  install -m 0755 "$binary" "$root$bindir/.agentd.new"
  if [ -f "$root$bindir/agentd" ]; then
    cp -p "$root$bindir/agentd" "$root$bindir/agentd.previous"
  fi
  mv -f "$root$bindir/.agentd.new" "$root$bindir/agentd"
  ln -sfn agentd "$root$bindir/agentctl"
  say "installed $version as $root$bindir/agentd (+ agentctl)"

  install -d -m 0755 "$root$confdir"
  install -m 0644 "$here/agentd.toml" "$root$confdir/agentd.toml.example"
  if [ ! -e "$root$confdir/agentd.toml" ]; then
    install -m 0640 -g "$(group_id)" "$here/agentd.toml" "$root$confdir/agentd.toml"
    say "wrote $root$confdir/agentd.toml (the example config)"
  else
    say "kept $root$confdir/agentd.toml"
  fi
  install -d -m 0750 "$root$statedir"
  chown "$(user_id):$(group_id)" "$root$statedir"

  install -d -m 0755 "$root$unitdir"
  install_unit "$here/systemd/agentd.service" "$root$unitdir/agentd.service"
  enable_unit agentd.service multi-user.target
  if [ "$socket" = yes ]; then
    install_unit "$here/systemd/agentd.socket" "$root$unitdir/agentd.socket"
    install -d -m 0755 "$root$unitdir/agentd.service.d"
    install_unit "$here/systemd/agentd.service.d/socket.conf" "$root$unitdir/agentd.service.d/socket.conf"
    enable_unit agentd.socket sockets.target
  fi
  if [ "$socket" = yes ]; then
    say "installed and enabled agentd.service and agentd.socket"
  else
    say "installed and enabled agentd.service"
  fi
  restart_service
}

do_rollback() {
  [ -f "$root$bindir/agentd.previous" ] || die "nothing to roll back to: no $root$bindir/agentd.previous"
  mv -f "$root$bindir/agentd" "$root$bindir/.agentd.rolledback"
  mv -f "$root$bindir/agentd.previous" "$root$bindir/agentd"
  mv -f "$root$bindir/.agentd.rolledback" "$root$bindir/agentd.previous"
  say "rolled back to $("$root$bindir/agentd" version 2>/dev/null || echo the previous binary) (the replaced one is agentd.previous)"
  restart_service
}

do_uninstall() {
  disable_unit agentd.socket sockets.target
  disable_unit agentd.service multi-user.target
  rm -f "$root$unitdir/agentd.service" "$root$unitdir/agentd.socket"
  rm -rf "$root$unitdir/agentd.service.d"
  rm -f "$root$bindir/agentctl" "$root$bindir/agentd" "$root$bindir/agentd.previous" \
    "$root$bindir/.agentd.new"
  if live_systemd; then systemctl daemon-reload; fi
  say "removed the binary, agentctl and the units"
  if [ "$purge" = yes ]; then
    rm -rf "$root$confdir" "$root$statedir" "$root/run/agentd"
    remove_user
    say "purged $root$confdir, $root$statedir and the $user user"
  else
    say "kept $root$confdir and $root$statedir (--purge removes them)"
  fi
}

user_id() {
  if [ -n "$root" ]; then awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/passwd"; else id -u "$user"; fi
}
group_id() {
  if [ -n "$root" ]; then awk -F: -v g="$group" '$1 == g { print $3 }' "$root/etc/group"; else getent group "$group" | cut -d: -f3; fi
}

case "$action" in
  install) do_install ;;
  rollback) do_rollback ;;
  uninstall) do_uninstall ;;
esac
