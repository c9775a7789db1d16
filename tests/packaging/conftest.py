"""Fixtures for the packaging tests: the frozen binary (built once per test session from
packaging/pyinstaller.spec) and a fake systemd notify socket."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from tests.packaging.sdnotify import NotifySocket
from tests.utils import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "packaging" / "pyinstaller.spec"
#: bundled into the test binary and imported at its start: extra plugins for the tests
TEST_MODULES = ["tests.testplugins", "tests.packaging.probes"]


@functools.cache  # one key per session, however often the sources change meanwhile
def _build_key() -> str:
    """Everything the frozen binary is made of: our sources, the spec, the interpreter and the
    installed distributions (entry points are collected from them)."""
    h = hashlib.sha256()
    files = sorted(
        [
            *(ROOT / "agentd").rglob("*.py"),
            *(ROOT / "packaging").glob("*.py"),
            SPEC,
            ROOT / "tests" / "testplugins.py",
            ROOT / "tests" / "packaging" / "probes.py",
        ]
    )
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    h.update(sys.version.encode())
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    h.update("\n".join(dists).encode())
    h.update(" ".join(TEST_MODULES).encode())
    return h.hexdigest()[:16]


def _build(out: Path, binary: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level=WARN",
        "--distpath",
        str(out / "dist"),
        "--workpath",
        str(out / "work"),
        str(SPEC),
        "--",
        *(arg for m in TEST_MODULES for arg in ("--test-module", m)),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not binary.exists():
        pytest.fail(
            f"the frozen build failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False
        )
    print(f"\nfrozen test binary built in {time.monotonic() - t0:.0f}s: {binary}")
    shutil.rmtree(out / "work", ignore_errors=True)
    for old in out.parent.iterdir():  # builds of sources that have changed since
        if old != out and time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def frozen_dir() -> Path:
    """A directory with the frozen ``agentd`` (plus the test plugins) and an ``agentctl``
    symlink to it. Built from the spec once per session (and reused across sessions while
    nothing it is made of changed). Fails, never skips, when PyInstaller is missing."""
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.fail(
            "PyInstaller is not installed: the packaging tests build the frozen binary "
            "(pip install -e '.[dev]' installs the build extra)",
            pytrace=False,
        )
    out = ROOT / "build" / "pytest-frozen" / _build_key()
    out.mkdir(parents=True, exist_ok=True)
    binary = out / "dist" / "agentd"
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same sources
        os.utime(out)  # in use: other sessions prune builds untouched for an hour
        if not binary.exists():
            _build(out, binary)
        link = out / "dist" / "agentctl"
        if not link.is_symlink():
            link.symlink_to("agentd")
    return out / "dist"


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    with short_tmpdir("sdn") as d, NotifySocket(str(d / "notify")) as sock:
        yield sock


@pytest.fixture
def frozen_env() -> dict[str, str]:
    """The environment for a frozen agentd: ours minus what would change its behaviour."""
    drop = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("OTEL_")}
    env.pop("JOURNAL_STREAM", None)
    return env
