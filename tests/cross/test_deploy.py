"""cross-build/deploy.sh against a stand-in board: an arm64 Debian root reached through a fake
``ssh`` that runs each remote command in that root (chroot, through qemu-user), so the real
script picks the artifact by the board's ``uname -m``, streams it with install.sh, and installs
it with the real installer. Only the network hop is simulated."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cross.test_verify import ARTIFACT, REPO

pytestmark = pytest.mark.arm64

DEPLOY = REPO / "cross-build" / "deploy.sh"
FAKE_SSH = """#!/bin/bash
# ssh [-o OPT]... HOST COMMAND: run COMMAND in $FAKE_BOARD_ROOT as root
while [ $# -gt 0 ]; do
  case "$1" in -o) shift 2 ;; -*) shift ;; *) break ;; esac
done
shift  # the host
if [ -n "${FAKE_UNAME:-}" ] && [ "$*" = "uname -m" ]; then echo "$FAKE_UNAME"; exit 0; fi
exec chroot "$FAKE_BOARD_ROOT" /usr/bin/env -i HOME=/root \\
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$*"
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the stand-in board is a chroot: needs root")
    if not ARTIFACT.is_file():
        pytest.fail(f"{ARTIFACT} is missing: build it with `cross-build/build.sh arm64`")
    found = subprocess.run(
        ["bash", "-c", '. cross-build/lib.sh; root_tarball boot arm64 && echo "$ROOT_TARBALL"'],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    tarball = found.stdout.strip().splitlines()[-1]
    root = Path("/var/tmp") / f"agentd-deploy-board-{os.getpid()}"
    root.mkdir(mode=0o755)
    subprocess.run(
        f"zstd -q -dc {tarball} | tar --numeric-owner -xpf - -C {root}",
        shell=True,
        check=True,
        timeout=300,
    )
    sudo = root / "usr/local/bin/sudo"
    sudo.write_text('#!/bin/sh\nexec "$@"\n')
    sudo.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)
        mounts = Path("/proc/mounts").read_text()
        if f" {root}/" not in mounts and f" {root} " not in mounts:
            shutil.rmtree(root)


def deploy(
    board: Path, tmp_path: Path, *args: str, uname: str = ""
) -> subprocess.CompletedProcess[str]:
    fakebin = tmp_path / "bin"
    fakebin.mkdir(exist_ok=True)
    (fakebin / "ssh").write_text(FAKE_SSH)
    (fakebin / "ssh").chmod(0o755)
    env = dict(os.environ, FAKE_BOARD_ROOT=str(board), FAKE_UNAME=uname)
    env["PATH"] = f"{fakebin}:{env['PATH']}"
    return subprocess.run(
        [str(DEPLOY), "--dist", str(ARTIFACT.parent), *args, "pi@board"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


@pytest.mark.timeout(900)
def test_deploy_installs_the_arm64_artifact_and_upgrades(board: Path, tmp_path: Path) -> None:
    first = deploy(board, tmp_path, "--no-restart")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "is aarch64: installing agentd-linux-arm64" in first.stderr
    installed = board / "usr/local/bin/agentd"
    assert installed.read_bytes() == ARTIFACT.read_bytes()
    assert os.readlink(board / "usr/local/bin/agentctl") == "agentd"
    assert (board / "etc/systemd/system/agentd.service").is_file()
    assert (board / "etc/systemd/system/multi-user.target.wants/agentd.service").is_symlink()
    assert (board / "etc/agentd/agentd.toml").is_file()
    assert any(line.startswith("agentd:") for line in (board / "etc/passwd").read_text().split())
    # the board ran the binary it got (through qemu-user): the version line came back
    assert "runs agentd " in first.stderr, first.stderr
    # a second deploy is an upgrade: the previous binary is kept for --rollback, config kept
    (board / "etc/agentd/agentd.toml").write_text("# edited on the board\n")
    second = deploy(board, tmp_path, "--no-restart")
    assert second.returncode == 0, second.stderr + second.stdout
    assert (board / "usr/local/bin/agentd.previous").is_file()
    assert (board / "etc/agentd/agentd.toml").read_text() == "# edited on the board\n"
    # nothing left behind in the board's temporary directory
    assert not [p for p in (board / "tmp").iterdir() if p.name.startswith("tmp.")]


def test_deploy_refuses_a_32_bit_board(board: Path, tmp_path: Path) -> None:
    proc = deploy(board, tmp_path, "--no-restart", uname="armv7l")
    assert proc.returncode == 1
    assert "32-bit ARM" in proc.stderr
