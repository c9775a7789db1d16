"""exec -> READY=1 of the ARM64 artifact under qemu-user (issue #18): the time systemd would
wait for, measured as the packaging tests do natively: a notify socket bound here, the
artifact started on its embedded default config, the clock stopped at ``READY=1``; the median
of three starts is reported (``-s`` prints it; the junit XML has it as a property). Emulation
on a shared x86_64 is a sanity figure, not a Raspberry Pi's: nothing here asserts a time, only
that READY comes at all within the unit's start budget.

The artifact runs through binfmt_misc with ``QEMU_LD_PREFIX`` pointing at an arm64 root
unpacked from the cross-build cache (the root verify.sh uses), so the one-file bootloader's
re-exec of itself finds the same loader and libraries. Marked ``arm64`` like test_verify.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils import short_tmpdir

pytestmark = pytest.mark.arm64

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = Path(os.environ.get("AGENTD_ARM64_ARTIFACT", REPO / "dist" / "agentd-linux-arm64"))
CACHE = Path(os.environ.get("AGENTD_CROSS_CACHE", Path.home() / ".cache" / "agentd-cross"))
#: the unit's default TimeoutStartSec is 90 s; emulation on a loaded machine stays well inside
READY_BOUND = 90.0
STARTS = 3


@pytest.fixture(scope="module")
def artifact() -> Path:
    if not ARTIFACT.is_file():
        pytest.fail(f"{ARTIFACT} is missing: build it with `cross-build/build.sh arm64`")
    return ARTIFACT


@pytest.fixture(scope="module")
def sysroot() -> Iterator[Path]:
    """An arm64 Debian root from the cross-build cache (boot root first: verify.sh's)."""
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.fail(
            "qemu-aarch64 is not registered in binfmt_misc (cross-build/build.sh arm64 does it)",
            pytrace=False,
        )
    roots = sorted((CACHE / "roots").glob("boot-*-arm64-*.tar.zst")) + sorted(
        (CACHE / "roots").glob("build-*-arm64-*.tar.zst")
    )
    if not roots or shutil.which("zstd") is None:
        pytest.fail(f"no arm64 root in {CACHE}/roots (cross-build/build.sh arm64 makes one)")
    with short_tmpdir("agarm") as d:
        root = d / "root"
        root.mkdir()
        subprocess.run(
            f"zstd -q -dc '{roots[0]}' | tar -xf - -C '{root}'",
            shell=True,
            check=True,
            timeout=300,
        )
        yield root


def _ready_once(artifact: Path, sysroot: Path, base: Path) -> float:
    notify = base / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(READY_BOUND)
    tmp = base / "state" / "unpack"  # as the unit: on disk, under the state directory
    tmp.mkdir(parents=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(base),
        "NOTIFY_SOCKET": str(notify),
        "TMPDIR": str(tmp),
        "QEMU_LD_PREFIX": str(sysroot),
    }
    log = (base / "agentd.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            str(artifact),
            "run",
            "--state-dir",
            str(base / "state"),
            "--runtime-dir",
            str(base / "run"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                proc.kill()
                proc.wait(30)
                text = (base / "agentd.log").read_text(errors="replace")
                pytest.fail(f"no READY=1 within {READY_BOUND}s: {text[-2000:]}")
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sock.close()
        log.close()


def test_exec_to_ready_under_emulation(
    artifact: Path, sysroot: Path, record_property: pytest.RecordProperty
) -> None:
    figures = []
    for _ in range(STARTS):
        with short_tmpdir("agrdy") as base:
            figures.append(_ready_once(artifact, sysroot, base))
    median = statistics.median(figures)
    record_property("exec_to_ready_seconds_median", f"{median:.2f}")
    load = os.getloadavg()[0]
    print(
        f"\narm64 (qemu-user) exec -> READY=1: median {median:.2f} s of "
        f"{', '.join(f'{f:.2f}' for f in figures)}; load average {load:.2f}"
    )
    assert all(0 < f < READY_BOUND for f in figures)
