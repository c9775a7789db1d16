#!/usr/bin/env bash
# Build the one-file agentd artifact for Linux amd64 and/or arm64 from this checkout.
#
#   cross-build/build.sh [amd64|arm64|all|native] [--builder docker|podman|rootfs] [--out DIR]
#                        [--base IMAGE] [--ca-file PEM] [--with-boot-root]
#
# Every builder uses Debian bookworm's python3.11 (PGO/LTO; glibc 2.36 floor) with -updates and
# -security, the same packaging/pyinstaller.spec, and writes DIR/agentd-linux-<arch>, its
# .sha256 and its .packages manifest (what it bundles, cross-build/manifest.py; default DIR: dist/).
#   docker  docker buildx build --platform linux/<arch> -f cross-build/Dockerfile (QEMU via binfmt);
#           chosen when `docker info` answers.
#   podman  podman build of the same Dockerfile (chroot isolation), on a local base imported from
#           the rootfs builder's cached root (so both bundle the same package versions) unless
#           --base names one; chosen when no Docker engine answers and podman is installed.
#   rootfs  debootstrap a bookworm root for <arch> (cached under ~/.cache/agentd-cross/), chroot
#           into it (qemu-user-static through binfmt_misc when foreign), venv + pip + PyInstaller.
#           Needs root. What CI uses (and podman beside it).
#   native  packaging/build.sh with this machine's Python (a development build, not a release).
# --base IMAGE     the container builders' base (--build-arg BASE=); default: the Dockerfile's
#                  for docker, the local one for podman
# --ca-file PEM    extra CA certificates for pip (a TLS-intercepting proxy's), passed to the
#                  container builders as the build secret extra_ca and added to the rootfs
#                  root's bundle; never part of an image layer or the artifact. Default: the
#                  bundle pip trusts here (PIP_CERT, pip's `cert` setting, REQUESTS_CA_BUNDLE,
#                  SSL_CERT_FILE), else /usr/local/share/ca-certificates/*.crt
# --with-boot-root also makes (in parallel, if not cached) the systemd root verify.sh boots.
#
# Environment: AGENTD_CROSS_CACHE (root tarballs, pip cache), AGENTD_CROSS_WORK (scratch, default
# /var/tmp/agentd-cross), AGENTD_CROSS_KEEP=1 keeps the scratch root for debugging,
# AGENTD_CROSS_ROOT_MAX_DAYS (7: an older cached root is made again, with the updates since),
# AGENTD_CROSS_PODMAN_ISOLATION (chroot; `oci` runs RUN steps with podman's OCI runtime).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cross-build/lib.sh
. "$here/lib.sh"
LOG_TAG=build

usage() {
  sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

target=arm64 builder=auto out=$repo/dist with_boot_root=0 base='' ca_file=${AGENTD_CROSS_CA_FILE:-}
while [ $# -gt 0 ]; do
  case "$1" in
  amd64 | arm64 | all | native) target=$1 ;;
  --builder) builder=${2:?--builder needs docker, podman or rootfs}; shift ;;
  --builder=*) builder=${1#*=} ;;
  --out) out=${2:?--out needs a directory}; shift ;;
  --out=*) out=${1#*=} ;;
  --base) base=${2:?--base needs an image}; shift ;;
  --base=*) base=${1#*=} ;;
  --ca-file) ca_file=${2:?--ca-file needs a file}; shift ;;
  --ca-file=*) ca_file=${1#*=} ;;
  --with-boot-root) with_boot_root=1 ;;
  -h | --help) usage 0 ;;
  *) log "unknown argument: $1"; usage ;;
  esac
  shift
done
case "$builder" in auto | docker | podman | rootfs) ;; *) die "--builder: docker, podman or rootfs, not $builder" ;; esac
if [ -n "$ca_file" ]; then
  [ -s "$ca_file" ] || die "--ca-file $ca_file: no such file, or empty"
  grep -q 'BEGIN CERTIFICATE' "$ca_file" || die "--ca-file $ca_file: no PEM certificate in it"
  ca_file=$(cd "$(dirname "$ca_file")" && pwd)/$(basename "$ca_file")
else
  find_ca_file
  ca_file=$CA_FILE
fi
if [ -n "$ca_file" ]; then
  log "CA certificates for pip: $ca_file ($(grep -c 'BEGIN CERTIFICATE' "$ca_file"))"
fi
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
  elif command -v podman >/dev/null && timeout 60 podman info >/dev/null 2>&1; then
    builder=podman
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
  container_args
  log "docker buildx build --platform linux/$arch${base:+ (BASE=$base)}"
  docker buildx build --platform "linux/$arch" -f "$here/Dockerfile" --target artifact \
    "${CONTAINER_ARGS[@]}" --output "type=local,dest=$out" "$repo"
  [ -s "$out/agentd-linux-$arch" ] || die "the docker build wrote no $out/agentd-linux-$arch"
  (cd "$out" && sha256sum "agentd-linux-$arch" >"agentd-linux-$arch.sha256")
  log "built $out/agentd-linux-$arch in $(($(date +%s) - t0))s"
}

# The container builders' arguments: the base, pip's index and proxies, the CA secret.
container_args() {
  local v
  CONTAINER_ARGS=()
  if [ -n "$base" ]; then CONTAINER_ARGS+=(--build-arg "BASE=$base"); fi
  for v in PIP_INDEX_URL AGENTD_BUILD_EXTRAS HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    # a file: index exists only on this machine
    case "${!v-unset}" in unset | *file:*) ;; *) CONTAINER_ARGS+=(--build-arg "$v=${!v}") ;; esac
  done
  if [ -n "$ca_file" ]; then CONTAINER_ARGS+=(--secret "id=extra_ca,src=$ca_file"); fi
}

# --- podman ----------------------------------------------------------------------------------------

# The rootfs builder's cached build root as an image: the same packages at the same patch levels.
# Tagged with the tarball's key and time, so a root made again (AGENTD_CROSS_ROOT_MAX_DAYS) is
# imported again.
podman_local_base() {
  local arch=$1 name t
  root_tarball build "$arch"
  name=localhost/agentd-cross-base:$(basename "$ROOT_TARBALL" .tar.zst)-$(stat -c %Y "$ROOT_TARBALL")
  if ! podman image exists "$name"; then
    t=$(date +%s)
    zstd -q -dc "$ROOT_TARBALL" | podman import --quiet --os linux --arch "$arch" \
      --message "cross-build: $(basename "$ROOT_TARBALL")" - "$name" >/dev/null ||
      die "podman import of $ROOT_TARBALL failed"
    log "imported $(basename "$ROOT_TARBALL") as $name in $(($(date +%s) - t))s"
  fi
  PODMAN_BASE=$name
}

build_podman() {
  local arch=$1 t0 dest isolation=${AGENTD_CROSS_PODMAN_ISOLATION:-chroot}
  t0=$(date +%s)
  command -v podman >/dev/null || apt_install podman
  command -v podman >/dev/null || die "podman is not installed (apt-get install podman)"
  if [ "$arch" != "$(host_arch)" ]; then ensure_host_tools "$arch"; fi
  if [ -z "$base" ]; then
    [ "$(id -u)" = 0 ] || die "the local base needs root (debootstrap): run as root or pass --base IMAGE"
    podman_local_base "$arch"
    base=$PODMAN_BASE
  fi
  container_args
  mkdir -p "$WORK_DIR"
  dest=$(mktemp -d "$WORK_DIR/podman-out-$arch.XXXXXX")
  track_dir "$dest"
  # --isolation chroot: the RUN steps need no OCI runtime (crun cannot start containers on
  # cgroup v1 hybrid hosts); qemu comes through binfmt_misc's F flag, as for the rootfs builder.
  log "podman build --platform linux/$arch --isolation $isolation (BASE=$base)"
  podman build --platform "linux/$arch" --isolation "$isolation" -f "$here/Dockerfile" \
    --ignorefile "$here/Dockerfile.dockerignore" --target artifact \
    "${CONTAINER_ARGS[@]}" --output "type=local,dest=$dest" "$repo" ||
    die "podman build failed (its output is above)"
  [ -s "$dest/agentd-linux-$arch" ] || die "the podman build wrote no agentd-linux-$arch"
  install -m 0755 "$dest/agentd-linux-$arch" "$out/agentd-linux-$arch.tmp$$"
  mv "$out/agentd-linux-$arch.tmp$$" "$out/agentd-linux-$arch"
  install -m 0644 "$dest/agentd-linux-$arch.packages" "$out/agentd-linux-$arch.packages"
  (cd "$out" && sha256sum "agentd-linux-$arch" >"agentd-linux-$arch.sha256")
  remove_dir "$dest"
  log "built $out/agentd-linux-$arch ($(du -h "$out/agentd-linux-$arch" | cut -f1)) in $(($(date +%s) - t0))s"
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
  copy_network_config "$root" "$ca_file"
  copy_checkout "$root/src"
  if [ -n "${AGENTD_CROSS_SPEC:-}" ]; then cp "$AGENTD_CROSS_SPEC" "$root/src/packaging/pyinstaller.spec"; fi
  # what it bundles, read the same way in every builder (cross-build/Dockerfile does it too)
  cp "$here/manifest.py" "$root/manifest.py"
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
  step "packaging/build.sh --python python3 --venv /opt/venv (pip install .[build,otlp], the spec)"
  packaging/build.sh --python python3 --venv /opt/venv --out /out
else
  step "venv + pip install .[build]"
  python3 -m venv /opt/venv
  /opt/venv/bin/pip install -q '/src[build]'
  step "pyinstaller"
  /opt/venv/bin/python -m PyInstaller --noconfirm --clean --distpath /out \
    --workpath /tmp/pyinstaller-work packaging/pyinstaller.spec
fi
python3 /manifest.py packages /out/agentd --venv /opt/venv >/out/agentd.packages
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
  install -m 0644 "$root/out/agentd.packages" "$out/agentd-linux-$arch.packages"
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
