#!/usr/bin/env bash
# Build the one-file agentd executable from a checkout, natively (this machine's CPU and
# glibc: build release artifacts on the oldest distribution you deploy to).
#
#   packaging/build.sh [--python PY] [--venv DIR] [--out DIR]
#
#   --python PY   the interpreter to bundle (default: python3); it needs its shared library
#                 (Debian: apt-get install libpython3.11) and `strip` (binutils)
#   --venv DIR    use (and keep) this virtual environment, made with PY if absent, instead of a
#                 fresh temporary one: dependencies already in it are not installed again
#                 (cross-build/Dockerfile installs them in a layer of their own)
#   --out DIR     where the executable goes (default: dist/ in the checkout): DIR/agentd, plus
#                 DIR/agentctl -> agentd and DIR/agentd.sha256
#
# The virtual environment gets agentd with the `build` extra (PyInstaller and the pinned
# hooks) and the optional extras in $AGENTD_BUILD_EXTRAS (comma-separated; default: otlp, the
# OTLP/HTTP exporter for [telemetry] exporter = "otlp"; set it empty for a smaller binary),
# then packaging/pyinstaller.spec runs and bundles what is installed.
set -euo pipefail

usage() { sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=python3
out="$root/dist"
venv=
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=${2:?--python needs a value}; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    --venv) venv=${2:?--venv needs a value}; shift 2 ;;
    --venv=*) venv=${1#*=}; shift ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    -h|--help) usage 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done
command -v "$python" >/dev/null || { echo "build.sh: no interpreter $python" >&2; exit 1; }
command -v strip >/dev/null || { echo "build.sh: strip not found (install binutils)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/agentd-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
optional=${AGENTD_BUILD_EXTRAS-otlp}
extras=build${optional:+,$optional}

venv=${venv:-$work/venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "build.sh: $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])') on $(uname -m), extras [$extras], venv $venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip always rebuilds a local directory; dependencies already satisfied in --venv are kept.
if ! "$venv/bin/pip" install -q "${root}[$extras]"; then
  echo "build.sh: pip could not install agentd[$extras] (its error is above; behind a" \
    "TLS-intercepting proxy pip needs the proxy's CA: PIP_CERT or pip's 'cert' setting)" >&2
  exit 1
fi
"$venv/bin/python" -m PyInstaller --noconfirm --clean --log-level=WARN \
  --distpath "$work/dist" --workpath "$work/work" "$root/packaging/pyinstaller.spec"

install -m 0755 "$work/dist/agentd" "$out/agentd"
ln -sfn agentd "$out/agentctl"
(cd "$out" && sha256sum agentd > agentd.sha256)
"$out/agentd" version >/dev/null
size=$(stat -c %s "$out/agentd")
echo "build.sh: $out/agentd ($((size / 1024)) KiB, $(cut -d' ' -f1 "$out/agentd.sha256"))"
echo "build.sh: needs glibc >= $(ldd --version | head -1 | awk '{print $NF}') (this machine's) on the target"
