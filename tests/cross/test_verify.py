"""The ARM64 artifact, verified by cross-build/verify.sh: its ELF header, the binary under
qemu-user (version, check-config, a daemon that ticks and stops on SIGTERM, agentctl through
its own socket) and the binary installed in a Debian arm64 root booted with systemd-nspawn.

Marked ``arm64``: the default test command deselects them (pyproject ``addopts``); `.ci/run`
builds ``dist/agentd-linux-arm64`` with ``cross-build/build.sh arm64 --builder rootfs`` and runs
``pytest -m arm64``. ``AGENTD_ARM64_ARTIFACT`` points them at another file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.arm64

REPO = Path(__file__).resolve().parents[2]
VERIFY = REPO / "cross-build" / "verify.sh"
ARTIFACT = Path(os.environ.get("AGENTD_ARM64_ARTIFACT", REPO / "dist" / "agentd-linux-arm64"))
SKIPPED = 77


def verify(artifact: Path, stage: str, results: Path, timeout: float) -> dict[str, list[str]]:
    proc = subprocess.run(
        [str(VERIFY), str(artifact), "--only", stage, "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    summary = (results / "summary").read_text() if (results / "summary").exists() else ""
    lines: dict[str, list[str]] = {"PASS": [], "FAIL": [], "SKIP": []}
    for line in summary.splitlines():
        word, _, rest = line.partition(" ")
        lines.setdefault(word, []).append(rest)
    report = f"verify.sh exit {proc.returncode}\n{summary}\n--- stderr ---\n{proc.stderr[-3000:]}"
    assert proc.returncode in (0, 1, SKIPPED), report
    assert not lines["FAIL"], report
    assert proc.returncode != 1, report
    lines["report"] = [report]
    return lines


def passed(lines: dict[str, list[str]], prefix: str) -> bool:
    return any(p.startswith(prefix) for p in lines["PASS"])


@pytest.fixture(scope="module")
def artifact() -> Path:
    if not ARTIFACT.is_file():
        pytest.fail(f"{ARTIFACT} is missing: build it with `cross-build/build.sh arm64`")
    return ARTIFACT


@pytest.fixture(scope="module")
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("verify.sh's user and boot stages need root (chroot, mounts, systemd-nspawn)")


def test_elf_header_is_aarch64(artifact: Path, tmp_path: Path) -> None:
    lines = verify(artifact, "elf", tmp_path, timeout=60)
    assert passed(lines, "elf: ELF 64-bit LSB executable, arm64"), lines["report"][0]
    # the build's manifest names the Debian packages, and agrees with the bundled bytes
    assert passed(lines, "bundle: libpython 3.11.2-"), lines["report"][0]
    figures = (tmp_path / "figures").read_text()
    assert re.search(r"^bundled_libssl=lib(crypto|ssl)\.so\.3 OpenSSL 3\.", figures, re.M), figures


def test_elf_check_rejects_a_host_binary(tmp_path: Path) -> None:
    """The check can fail: this machine's own executable is not aarch64."""
    fake = tmp_path / "agentd-linux-arm64"
    shutil.copy(os.path.realpath(shutil.which("true") or "/bin/true"), fake)
    results = tmp_path / "results"
    proc = subprocess.run(
        [str(VERIFY), str(fake), "--only", "elf", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    summary = (results / "summary").read_text()
    assert proc.returncode == 1, summary
    assert "FAIL elf: machine 3e00 is not arm64" in summary


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("as_root")
def test_runs_under_qemu_user(artifact: Path, tmp_path: Path) -> None:
    lines = verify(artifact, "user", tmp_path, timeout=850)
    report = lines["report"][0]
    for check in (
        "user: agentd version -> agentd ",
        "user: agentd check-config (embedded default) -> ok",
        "user: check-config on a bad file -> exit 1",
        "user: agentd plugins lists the built-ins",
        "user: daemon started",
        "user: the loop ticks",
        "user: agentctl status --json through",
        "user: SIGTERM -> clean stop, exit 0",
    ):
        assert passed(lines, check), f"missing PASS {check!r}\n{report}"
    assert not lines["SKIP"], report


@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("as_root")
def test_boots_under_systemd_nspawn(artifact: Path, tmp_path: Path) -> None:
    lines = verify(artifact, "boot", tmp_path, timeout=1150)
    report = lines["report"][0]
    if any(s.startswith("boot: systemd-nspawn could not boot") for s in lines["SKIP"]):
        # verify.sh names nspawn's own error: this machine cannot run containers
        pytest.skip(lines["SKIP"][0])
    for check in (
        "boot: systemctl enable --now agentd",
        "boot: agentd active (Type=notify",
        "boot: STATUS= from the daemon",
        "boot: WATCHDOG=1 received",
        "boot: agentctl status",
        "boot: systemctl reload agentd",
        "boot: systemctl stop agentd (Result=success, exit 0",
        "boot: journal: Started agentd",
        "boot: journal: Reloaded agentd",
        "boot: journal: agentd: stopped",
    ):
        assert passed(lines, check), f"missing PASS {check!r}\n{report}"
    assert not lines["SKIP"], report
