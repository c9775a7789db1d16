# shellcheck shell=bash
# Shared by cross-build/build.sh and cross-build/verify.sh (sourced, not run).
#
# Debian bookworm roots made with debootstrap, cached as tarballs keyed by their recipe, unpacked
# into a work directory per use, with mounts that are always undone. Foreign architectures run
# through qemu-user-static registered in binfmt_misc with the F (fix-binary) flag, so chroot and
# systemd-nspawn work without copying the emulator into the root.

SUITE=${AGENTD_CROSS_SUITE:-bookworm}
MIRROR=${AGENTD_CROSS_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${AGENTD_CROSS_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE_DIR=${AGENTD_CROSS_CACHE:-${HOME:-/root}/.cache/agentd-cross}
WORK_DIR=${AGENTD_CROSS_WORK:-/var/tmp/agentd-cross}
# Bump when the way a root is made changes (not its package list: that is hashed already).
# 3: the root also takes <suite>-updates and <suite>-security, as Debian's official images do.
ROOT_RECIPE=3
# A cached root older than this many days is made again, so security updates published since
# reach the next artifact (0: keep it forever, frozen at the patch levels of its first day).
ROOT_MAX_DAYS=${AGENTD_CROSS_ROOT_MAX_DAYS:-7}

# The build root: Debian's python3.11 (PGO/LTO) and what PyInstaller needs (libpython3.11 for
# the bundle, binutils for objdump/strip).
BUILD_PACKAGES=python3,python3-venv,libpython3.11,binutils,ca-certificates
# The boot root: what `systemd-nspawn --boot` needs to reach multi-user.target; no Python, so a
# passing verification also proves the artifact is self-contained.
BOOT_PACKAGES=systemd,systemd-sysv,dbus,procps

log() { printf '[%s %s] %s\n' "$(date -u +%H:%M:%S)" "${LOG_TAG:-cross}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

host_arch() {
  case "$(uname -m)" in
  x86_64) echo amd64 ;;
  aarch64 | arm64) echo arm64 ;;
  *) uname -m ;;
  esac
}

# The qemu binfmt entry name for a Debian architecture.
qemu_name() {
  case "$1" in
  arm64) echo aarch64 ;;
  amd64) echo x86_64 ;;
  *) die "unsupported architecture $1 (amd64 or arm64)" ;;
  esac
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $* and not root: install them (apt-get install $*)"
  command -v apt-get >/dev/null || die "missing $* and no apt-get: install them"
  log "installing host packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Host tools for a root of architecture $1 (debootstrap, zstd, qemu-user-static when foreign).
ensure_host_tools() {
  local arch=$1 need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v zstd >/dev/null || need+=(zstd)
  [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
  if [ "$arch" != "$(host_arch)" ]; then
    command -v "qemu-$(qemu_name "$arch")-static" >/dev/null || need+=(qemu-user-static)
  fi
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
  [ "$arch" = "$(host_arch)" ] || ensure_binfmt "$arch"
}

# Register qemu for a foreign architecture in binfmt_misc, mounting binfmt_misc if needed.
ensure_binfmt() {
  local q bm=/proc/sys/fs/binfmt_misc conf
  q=$(qemu_name "$1")
  if [ ! -e "$bm/register" ]; then
    mount -t binfmt_misc binfmt_misc "$bm" 2>/dev/null ||
      die "binfmt_misc is not mounted and cannot be mounted here (needs root and the binfmt_misc module)"
  fi
  if [ ! -e "$bm/qemu-$q" ]; then
    conf=/usr/lib/binfmt.d/qemu-$q.conf
    [ -r "$conf" ] || die "$conf missing: install qemu-user-static"
    log "registering $conf in binfmt_misc"
    grep -v '^#' "$conf" >"$bm/register" || die "cannot register qemu-$q in binfmt_misc"
  fi
  grep -qx enabled "$bm/qemu-$q" || die "binfmt_misc entry qemu-$q is disabled (echo 1 > $bm/qemu-$q)"
  # Without the F flag the kernel looks the interpreter up inside the chroot.
  QEMU_NEEDS_COPY=
  grep -q '^flags:.*F' "$bm/qemu-$q" || QEMU_NEEDS_COPY=$(sed -n 's/^interpreter //p' "$bm/qemu-$q")
}

# root_tarball KIND ARCH: sets ROOT_TARBALL to the cached tarball, making it if absent.
root_tarball() {
  local kind=$1 arch=$2 packages key tarball
  case "$kind" in
  build) packages=$BUILD_PACKAGES ;;
  boot) packages=$BOOT_PACKAGES ;;
  *) die "unknown root kind $kind" ;;
  esac
  key=$(printf '%s\n' "recipe=$ROOT_RECIPE" "suite=$SUITE" "arch=$arch" "variant=minbase" \
    "packages=$packages" | sha256sum | cut -c1-16)
  tarball=$CACHE_DIR/roots/$kind-$SUITE-$arch-$key.tar.zst
  if [ -s "$tarball" ] && [ "$ROOT_MAX_DAYS" != 0 ] &&
    [ -n "$(find "$tarball" -mmin "+$((ROOT_MAX_DAYS * 1440))" 2>/dev/null)" ]; then
    log "cached $kind root is older than $ROOT_MAX_DAYS days (AGENTD_CROSS_ROOT_MAX_DAYS): making it again"
    rm -f "$tarball"
  fi
  if [ -s "$tarball" ]; then
    log "cached $kind root: $tarball"
  else
    make_root "$kind" "$arch" "$packages" "$tarball"
  fi
  # shellcheck disable=SC2034 # read by the scripts that source this file
  ROOT_TARBALL=$tarball
}

make_root() {
  local kind=$1 arch=$2 packages=$3 tarball=$4 dir t0
  ensure_host_tools "$arch"
  mkdir -p "$CACHE_DIR/roots" "$WORK_DIR"
  dir=$(mktemp -d "$WORK_DIR/debootstrap-$kind-$arch.XXXXXX")
  track_dir "$dir"
  t0=$(date +%s)
  log "debootstrap $SUITE $arch ($kind: $packages)$([ "$arch" = "$(host_arch)" ] ||
    echo '; a few minutes under emulation')"
  if ! debootstrap --arch="$arch" --variant=minbase --include="$packages" "$SUITE" "$dir" "$MIRROR" \
    >"$dir.log" 2>&1; then
    tail -n 20 "$dir.log" >&2
    [ -f "$dir/debootstrap/debootstrap.log" ] && tail -n 20 "$dir/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log: $dir.log)"
  fi
  upgrade_root "$dir" "$arch"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*_Packages
  chmod 0755 "$dir" # mktemp made it 0700: services running as a user could not even chdir to /
  if [ "$kind" = boot ]; then prepare_boot_root "$dir"; fi
  tar --numeric-owner --xattrs -C "$dir" -cf - . | zstd -q -T0 -3 -o "$tarball.tmp$$"
  mv "$tarball.tmp$$" "$tarball"
  log "$kind root for $arch made in $(($(date +%s) - t0))s: $tarball ($(du -h "$tarball" | cut -f1))"
  remove_dir "$dir"
  rm -f "$dir.log"
}

# debootstrap installs from <suite> alone; Debian's official images (the docker builder's base)
# also have <suite>-updates and <suite>-security. Same sources, same patch levels of what the
# artifact bundles (libpython3.11, libssl3, ...).
upgrade_root() {
  local dir=$1 arch=$2 t0 rc=0 n
  if [ -z "$dir" ] || [ "$dir" = / ] || [ ! -x "$dir/usr/bin/apt-get" ]; then
    die "upgrade_root: '$dir' is not a root made by debootstrap"
  fi
  t0=$(date +%s)
  rm -f "$dir/etc/apt/sources.list"
  printf '%s\n' "Types: deb" "URIs: $MIRROR" "Suites: $SUITE $SUITE-updates" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" \
    "Types: deb" "URIs: $SECURITY_MIRROR" "Suites: $SUITE-security" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
    >"$dir/etc/apt/sources.list.d/debian.sources"
  mount -t proc proc "$dir/proc"
  chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    /bin/sh -c 'apt-get update -qq && apt-get upgrade -y -qq --no-install-recommends && apt-get clean' \
    >"$dir.upgrade.log" 2>&1 || rc=$?
  umount "$dir/proc" || umount -l "$dir/proc"
  if [ "$rc" != 0 ]; then
    tail -n 20 "$dir.upgrade.log" >&2
    die "apt-get upgrade from $SUITE-updates and $SUITE-security failed in the $arch root (log: $dir.upgrade.log)"
  fi
  n=$(grep -c '^Setting up' "$dir.upgrade.log" || true)
  log "$arch root: $n packages upgraded from $SUITE-updates/-security in $(($(date +%s) - t0))s"
  rm -f "$dir.upgrade.log"
}

# Settings that make a minbase root boot cleanly and fast in systemd-nspawn.
prepare_boot_root() {
  local dir=$1
  echo agentd-verify >"$dir/etc/hostname"
  : >"$dir/etc/machine-id"
  # Nobody logs in: the checks run from a oneshot unit and power the machine off.
  for unit in console-getty.service getty@.service systemd-timesyncd.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$dir/etc/systemd/system/$unit"
  done
}

# unpack TARBALL DIR
unpack_root() {
  mkdir -p "$2"
  track_dir "$2"
  zstd -q -dc "$1" | tar --numeric-owner --xattrs -xpf - -C "$2"
  chmod 0755 "$2"
}

# --- work directories and mounts, undone on exit -------------------------------------------------

TRACKED_MOUNTS=()
TRACKED_DIRS=()
TRACKED_FILES=()
track_dir() { TRACKED_DIRS+=("$1"); }

bind_mount() { # SRC DST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  TRACKED_MOUNTS+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

mount_chroot_fs() { # ROOT
  local root=$1
  mount -t proc proc "$root/proc" && TRACKED_MOUNTS+=("$root/proc")
  mount -t sysfs sysfs "$root/sys" && TRACKED_MOUNTS+=("$root/sys")
  bind_mount /dev "$root/dev"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null &&
    TRACKED_MOUNTS+=("$root/dev/pts")
  if [ -n "${QEMU_NEEDS_COPY:-}" ]; then
    mkdir -p "$root$(dirname "$QEMU_NEEDS_COPY")"
    cp -L "$QEMU_NEEDS_COPY" "$root$QEMU_NEEDS_COPY"
  fi
}

unmount_all() {
  local i m
  for ((i = ${#TRACKED_MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${TRACKED_MOUNTS[i]}
    mountpoint -q "$m" 2>/dev/null || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
  done
  TRACKED_MOUNTS=()
}

# Never delete through a mount point that is still attached (a bound /dev would be emptied).
remove_dir() {
  local d=$1
  [ -d "$d" ] || return 0
  if awk -v d="$d" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    log "warning: $d still has mounts; left in place"
    return 0
  fi
  rm -rf --one-file-system "$d"
}

# Processes whose root directory is inside DIR: anything left of a chroot or a container.
kill_root_processes() {
  local dir=$1 p r left=()
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    case "$r" in "$dir" | "$dir"/*) left+=("${p#/proc/}") ;; esac
  done
  if [ ${#left[@]} -gt 0 ]; then
    log "killing processes left in $dir: ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 1
  fi
}

cleanup() {
  local rc=$? d
  # a chroot'd daemon or a container left by an error path goes before its mounts do
  for d in "${TRACKED_DIRS[@]}"; do kill_root_processes "$d"; done
  unmount_all
  rm -f "${TRACKED_FILES[@]}"
  if [ -z "${AGENTD_CROSS_KEEP:-}" ]; then
    for d in "${TRACKED_DIRS[@]}"; do remove_dir "$d"; done
  else
    log "kept: ${TRACKED_DIRS[*]}"
  fi
  return "$rc"
}

# A clean environment for commands run in a root: no host PIP_* pointing at local wheel dirs.
chroot_env() {
  local v
  CHROOT_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
    PIP_DEFAULT_TIMEOUT=120 PIP_ROOT_USER_ACTION=ignore SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST HTTP_PROXY HTTPS_PROXY NO_PROXY \
    http_proxy https_proxy no_proxy; do
    case "${!v:-}" in "" | *file:*) ;; *) CHROOT_ENV+=("$v=${!v}") ;; esac
  done
}

# The CA certificates pip trusts on this machine, which a TLS-intercepting proxy's CA must be
# among for pip to work here at all: PIP_CERT, else pip's `cert` setting (its config files, the
# last one wins as in pip), else REQUESTS_CA_BUNDLE or SSL_CERT_FILE, else the local CAs Debian's
# update-ca-certificates adds (/usr/local/share/ca-certificates). Sets CA_FILE ("" if none).
find_ca_file() {
  local f c cert='' local_cas=()
  for f in /etc/xdg/pip/pip.conf /etc/pip.conf "${HOME:-/root}/.pip/pip.conf" \
    "${XDG_CONFIG_HOME:-${HOME:-/root}/.config}/pip/pip.conf" "${VIRTUAL_ENV:-/nonexistent}/pip.conf" \
    "${PIP_CONFIG_FILE:-/nonexistent}"; do
    [ -f "$f" ] || continue
    c=$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' "$f" | tail -n 1)
    if [ -n "$c" ]; then cert=$c; fi
  done
  for f in "${PIP_CERT:-}" "$cert" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}"; do
    if [ -n "$f" ] && [ -s "$f" ] && grep -q 'BEGIN CERTIFICATE' "$f"; then
      CA_FILE=$(readlink -f "$f")
      return 0
    fi
  done
  CA_FILE=
  for f in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [ -s "$f" ] && local_cas+=("$f")
  done
  [ ${#local_cas[@]} -gt 0 ] || return 0
  mkdir -p "$WORK_DIR"
  CA_FILE=$(mktemp "$WORK_DIR/extra-ca.XXXXXX")
  TRACKED_FILES+=("$CA_FILE")
  cat "${local_cas[@]}" >"$CA_FILE"
}

# What the root needs to reach the package index: the host's CA bundle (it may hold a proxy's
# CA) plus the extra CA file (CA_FILE, build.sh's --ca-file), and its system-wide pip config,
# minus anything that points at host-only paths (find-links directories, file:// indexes). The
# user's ~/.config/pip is not copied.
copy_network_config() {
  local root=$1 ca=${2:-} f bundle=/etc/ssl/certs/ca-certificates.crt
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  if [ -s "$bundle" ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp -L "$bundle" "$root$bundle"
  fi
  if [ -n "$ca" ] && ! cmp -s "$ca" "$bundle"; then
    mkdir -p "$root/etc/ssl/certs"
    cat "$ca" >>"$root$bundle"
  fi
  for f in /etc/pip.conf /etc/xdg/pip/*; do
    [ -f "$f" ] || continue
    mkdir -p "$root$(dirname "$f")"
    grep -v -i -E 'file:|find-links|find_links' "$f" >"$root$f" || true
  done
}
