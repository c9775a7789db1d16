# shellcheck shell=bash
# Shared by cross-build/build.sh and cross-build/verify.sh (sourced, not run).
#
# Debian bookworm roots made with debootstrap, cached as tarballs keyed by their recipe, unpacked
# into a work directory per use, with mounts that are always undone. Foreign architectures run
# through qemu-user-static registered in binfmt_misc with the F (fix-binary) flag, so chroot and
# systemd-nspawn work without copying the emulator into the root.

SUITE=${AGENTD_CROSS_SUITE:-bookworm}
MIRROR=${AGENTD_CROSS_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${AGENTD_CROSS_CACHE:-${HOME:-/root}/.cache/agentd-cross}
WORK_DIR=${AGENTD_CROSS_WORK:-/var/tmp/agentd-cross}
# Bump when the way a root is made changes (not its package list: that is hashed already).
ROOT_RECIPE=2

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
  if [ -s "$tarball" ]; then
    log "cached $kind root: $tarball"
  else
    make_root "$kind" "$arch" "$packages" "$tarball"
  fi
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
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*_Packages
  chmod 0755 "$dir" # mktemp made it 0700: services running as a user could not even chdir to /
  if [ "$kind" = boot ]; then prepare_boot_root "$dir"; fi
  tar --numeric-owner --xattrs -C "$dir" -cf - . | zstd -q -T0 -3 -o "$tarball.tmp$$"
  mv "$tarball.tmp$$" "$tarball"
  log "$kind root for $arch made in $(($(date +%s) - t0))s: $tarball ($(du -h "$tarball" | cut -f1))"
  remove_dir "$dir"
  rm -f "$dir.log"
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

# What the root needs to reach the package index: the host's CA bundle (it may hold a proxy's
# CA) and its system-wide pip config, minus anything that points at host-only paths
# (find-links directories, file:// indexes). The user's ~/.config/pip is not copied.
copy_network_config() {
  local root=$1 f
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  for f in /etc/pip.conf /etc/xdg/pip/*; do
    [ -f "$f" ] || continue
    mkdir -p "$root$(dirname "$f")"
    grep -v -i -E 'file:|find-links|find_links' "$f" >"$root$f" || true
  done
}
