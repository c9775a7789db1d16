#!/usr/bin/env bash
# Build the one-file agentd artifact for Linux amd64 and/or arm64 from this checkout.
#
#   cross-build/build.sh [amd64|arm64|all|native] [--builder docker|rootfs] [--out DIR]
#                        [--with-boot-root]
#
# Both builders use Debian bookworm's python3.11 (PGO/LTO; glibc 2.36 floor) and the same
# packaging/pyinstaller.spec, and write DIR/agentd-linux-<arch> (default DIR: dist/).
#   docker  docker buildx build --platform linux/<arch> -f cross-build/Dockerfile (QEMU via binfmt);
#           chosen when `docker info` answers.
#   rootfs  debootstrap a bookworm root for <arch> (cached under ~/.cache/agentd-cross/), chroot
#           into it (qemu-user-static through binfmt_misc when foreign), venv + pip + PyInstaller.
#           Needs root. What CI uses.
#   native  packaging/build.sh with this machine's Python (a development build, not a release).
# --with-boot-root also makes (in parallel, if not cached) the systemd root verify.sh boots.
#
# Environment: AGENTD_CROSS_CACHE (root tarballs, pip cache), AGENTD_CROSS_WORK (scratch, default
# /var/tmp/agentd-cross), AGENTD_CROSS_KEEP=1 keeps the scratch root for debugging.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cross-build/lib.sh
. "$here/lib.sh"
LOG_TAG=build

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

target=arm64 builder=auto out=$repo/dist with_boot_root=0
while [ $# -gt 0 ]; do
  case "$1" in
  amd64 | arm64 | all | native) target=$1 ;;
  --builder) builder=${2:?--builder needs docker or rootfs}; shift ;;
  --builder=*) builder=${1#*=} ;;
  --out) out=${2:?--out needs a directory}; shift ;;
  --out=*) out=${1#*=} ;;
  --with-boot-root) with_boot_root=1 ;;
  -h | --help) usage 0 ;;
  *) log "unknown argument: $1"; usage ;;
  esac
  shift
done
case "$builder" in auto | docker | rootfs) ;; *) die "--builder: docker or rootfs, not $builder" ;; esac
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "$target" = native ]; then
  [ -x "$repo/packaging/build.sh" ] || die "packaging/build.sh is missing"
  exec "$repo/packaging/build.sh" --out "$out"
fi

if [ "$builder" = auto ]; then
  if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1 &&
    docker buildx version >/dev/null 2>&1; then
    builder=docker
  else
    builder=rootfs
  fi
  log "builder: $builder"
fi

case "$target" in all) arches=(amd64 arm64) ;; *) arches=("$target") ;; esac

# --- docker ----------------------------------------------------------------------------------------

build_docker() {
  local arch=$1 t0
  t0=$(date +%s)
  command -v docker >/dev/null || die "docker is not installed (use --builder rootfs)"
  timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers \`docker info\` (use --builder rootfs)"
  if [ "$arch" != "$(host_arch)" ]; then
    # Docker Desktop ships QEMU; elsewhere register it (the same qemu-user-static binfmt entries).
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$arch")" ] || ensure_host_tools "$arch"
  fi
  log "docker buildx build --platform linux/$arch"
  docker buildx build --platform "linux/$arch" -f "$here/Dockerfile" --target artifact \
    --output "type=local,dest=$out" "$repo"
  [ -s "$out/agentd-linux-$arch" ] || die "the docker build wrote no $out/agentd-linux-$arch"
  (cd "$out" && sha256sum "agentd-linux-$arch" >"agentd-linux-$arch.sha256")
  log "built $out/agentd-linux-$arch in $(($(date +%s) - t0))s"
}

# --- rootfs ----------------------------------------------------------------------------------------

# The checkout as git sees it (tracked plus untracked-but-not-ignored files): no .venv, no dist.
copy_checkout() {
  local dst=$1
  mkdir -p "$dst"
  if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z -co --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -xf - -C "$dst"
  else
    tar -C "$repo" --exclude=.venv --exclude=dist --exclude=build --exclude=.git -cf - . |
      tar -xf - -C "$dst"
  fi
}

build_rootfs() {
  local arch=$1 t0 t root
  [ "$(id -u)" = 0 ] || die "the rootfs builder needs root (debootstrap, chroot, mounts)"
  [ -f "$repo/packaging/pyinstaller.spec" ] || [ -n "${AGENTD_CROSS_SPEC:-}" ] ||
    die "packaging/pyinstaller.spec is missing"
  t0=$(date +%s)
  ensure_host_tools "$arch"
  root_tarball build "$arch"
  mkdir -p "$WORK_DIR" "$CACHE_DIR/home-cache-$arch"
  root=$(mktemp -d "$WORK_DIR/build-$arch.XXXXXX")
  t=$(date +%s)
  unpack_root "$ROOT_TARBALL" "$root"
  copy_network_config "$root"
  copy_checkout "$root/src"
  if [ -n "${AGENTD_CROSS_SPEC:-}" ]; then cp "$AGENTD_CROSS_SPEC" "$root/src/packaging/pyinstaller.spec"; fi
  mount_chroot_fs "$root"
  # pip's and PyInstaller's caches (downloads, wheels, stripped libraries) survive between
  # builds: the second build downloads nothing.
  bind_mount "$CACHE_DIR/home-cache-$arch" "$root/root/.cache"
  mkdir -p "$root/out"
  log "root ready in $(($(date +%s) - t))s"
  cat >"$root/build-agentd.sh" <<'EOF'
set -eu
step() { echo "[chroot $(date -u +%H:%M:%S)] $*" >&2; }
step "python: $(python3 -VV | head -n 1); glibc $(ldd --version | head -n 1 | awk '{print $NF}')"
cd /src
if [ -x packaging/build.sh ]; then
  step "packaging/build.sh --python python3 (a venv, pip install .[build], the spec)"
  packaging/build.sh --python python3 --out /out
else
  step "venv + pip install .[build]"
  python3 -m venv /opt/venv
  /opt/venv/bin/pip install -q '/src[build]'
  step "pyinstaller"
  /opt/venv/bin/python -m PyInstaller --noconfirm --clean --distpath /out \
    --workpath /tmp/pyinstaller-work packaging/pyinstaller.spec
fi
step "done"
EOF
  chroot_env
  t=$(date +%s)
  log "building in the $arch root (pip + PyInstaller$([ "$arch" != "$(host_arch)" ] && echo ', emulated'))"
  if ! chroot "$root" "${CHROOT_ENV[@]}" /bin/sh /build-agentd.sh; then
    die "the build in the $arch root failed (AGENTD_CROSS_KEEP=1 keeps $root for a look)"
  fi
  log "pip + PyInstaller in the root took $(($(date +%s) - t))s"
  [ -s "$root/out/agentd" ] || die "the build wrote no out/agentd in the $arch root"
  install -m 0755 "$root/out/agentd" "$out/agentd-linux-$arch.tmp$$"
  mv "$out/agentd-linux-$arch.tmp$$" "$out/agentd-linux-$arch"
  (cd "$out" && sha256sum "agentd-linux-$arch" >"agentd-linux-$arch.sha256")
  unmount_all
  remove_dir "$root"
  log "built $out/agentd-linux-$arch ($(du -h "$out/agentd-linux-$arch" | cut -f1)) in $(($(date +%s) - t0))s"
}

trap cleanup EXIT
trap 'exit 130' INT TERM
boot_jobs=()
if [ "$with_boot_root" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "--with-boot-root needs root (debootstrap)"
  for arch in "${arches[@]}"; do
    ensure_host_tools "$arch"
    # debootstrap is single-threaded: on two cores it overlaps the build almost for free
    (trap cleanup EXIT; LOG_TAG=boot-root root_tarball boot "$arch") &
    boot_jobs+=($!)
  done
fi
for arch in "${arches[@]}"; do
  "build_$builder" "$arch"
done
for job in "${boot_jobs[@]}"; do
  wait "$job" || die "making the boot root failed"
done
