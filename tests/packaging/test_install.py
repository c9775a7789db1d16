"""packaging/install.sh into a throwaway root (--root, as for an image): the user and group,
the binary and the agentctl link, the config, the units and their enablement; upgrade keeps
config and state and the previous binary, rollback swaps back, uninstall keeps config and
state, purge removes them and the user."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "packaging" / "install.sh"

pytestmark = pytest.mark.root


def _image(base: Path) -> Path:
    """A minimal root: the account files useradd/groupadd --root edit."""
    image = base / "image"
    (image / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (image / "etc" / name).touch()
    return image


def _install(image: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("install.sh creates users and groups: needs root")
    for tool in ("useradd", "groupadd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install passwd)", pytrace=False)
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(image), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _entry(image: Path, table: str, name: str) -> list[str] | None:
    for line in (image / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def test_install_upgrade_rollback_uninstall_purge(frozen_dir: Path, short_tmp: Path) -> None:
    image = _image(short_tmp)
    binary = frozen_dir / "agentd"
    first = _install(image, "--binary", str(binary), "--prefix", "/opt/agentd", "--socket")
    assert first.returncode == 0, first.stderr
    assert "created user agentd" in first.stdout

    user = _entry(image, "passwd", "agentd")
    group = _entry(image, "group", "agentd")
    assert user is not None
    assert group is not None
    assert user[3] == group[2]  # primary group
    assert user[5] == "/var/lib/agentd"
    assert user[6].endswith("nologin")
    assert int(user[2]) < 1000  # a system account

    bindir = image / "opt" / "agentd" / "bin"
    assert (bindir / "agentd").read_bytes() == binary.read_bytes()
    assert os.readlink(bindir / "agentctl") == "agentd"
    version = subprocess.run(
        [str(bindir / "agentctl"), "--version"], capture_output=True, text=True, check=False
    )
    assert version.stdout.strip() == "agentctl 0.1.0"

    config = image / "etc" / "agentd" / "agentd.toml"
    assert config.read_text() == (ROOT / "packaging" / "agentd.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    assert config.stat().st_gid == int(group[2])
    state = image / "var" / "lib" / "agentd"
    assert (state.stat().st_uid, state.stat().st_gid) == (int(user[2]), int(group[2]))

    units = image / "etc" / "systemd" / "system"
    service = (units / "agentd.service").read_text()
    assert "ExecStart=/opt/agentd/bin/agentd run" in service
    assert "ExecReload=/opt/agentd/bin/agentctl reload" in service
    assert "/usr/local/bin" not in service
    wants = units / "multi-user.target.wants" / "agentd.service"
    assert os.readlink(wants) == "/etc/systemd/system/agentd.service"
    assert os.readlink(units / "sockets.target.wants" / "agentd.socket") == (
        "/etc/systemd/system/agentd.socket"
    )
    assert (
        "RuntimeDirectoryPreserve=yes" in (units / "agentd.service.d" / "socket.conf").read_text()
    )

    # upgrade: a changed config and the state survive, the old binary is kept
    config.write_text(config.read_text() + "\n# edited\n")
    (state / "agentd.db").write_bytes(b"state")
    second = _install(image, "--binary", str(binary), "--prefix", "/opt/agentd")
    assert second.returncode == 0, second.stderr
    assert f"kept {image}/etc/agentd/agentd.toml" in second.stdout  # paths under the root
    assert "created user" not in second.stdout
    assert config.read_text().endswith("# edited\n")
    assert (state / "agentd.db").read_bytes() == b"state"
    assert (bindir / "agentd.previous").read_bytes() == binary.read_bytes()
    lines = (image / "etc" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["agentd"]

    # rollback swaps the two binaries
    (bindir / "agentd.previous").write_bytes(b"#!/bin/sh\necho agentd 0.0.9\n")
    (bindir / "agentd.previous").chmod(0o755)
    back = _install(image, "--rollback", "--prefix", "/opt/agentd")
    assert back.returncode == 0, back.stderr
    assert "rolled back to agentd 0.0.9" in back.stdout
    assert (bindir / "agentd.previous").read_bytes() == binary.read_bytes()

    # uninstall keeps config and state; purge removes them and the account
    gone = _install(image, "--uninstall", "--prefix", "/opt/agentd")
    assert gone.returncode == 0, gone.stderr
    assert not (bindir / "agentd").exists()
    assert not (bindir / "agentctl").is_symlink()
    assert not (bindir / "agentd.previous").exists()
    assert not (units / "agentd.service").exists()
    assert not wants.is_symlink()
    assert (state / "agentd.db").exists()
    assert config.exists()
    assert _entry(image, "passwd", "agentd") is not None

    purged = _install(image, "--uninstall", "--purge", "--prefix", "/opt/agentd")
    assert purged.returncode == 0, purged.stderr
    assert not state.exists()
    assert not config.parent.exists()
    assert _entry(image, "passwd", "agentd") is None
    assert _entry(image, "group", "agentd") is None


def test_install_refuses_a_missing_binary(short_tmp: Path) -> None:
    image = _image(short_tmp)
    result = _install(image, "--binary", str(short_tmp / "nope"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"install.sh: no binary at {short_tmp / 'nope'} (build it: packaging/build.sh)"
    )
    assert _entry(image, "passwd", "agentd") is None  # nothing half-done


def test_install_into_an_empty_directory(short_tmp: Path) -> None:
    """`--root DIR` on a directory with no /etc at all (an image being assembled): install.sh
    starts the account files itself instead of failing in groupadd ("cannot lock /etc/group"),
    and every path it prints is under DIR."""
    image = short_tmp / "empty"
    image.mkdir()
    binary = short_tmp / "agentd"
    binary.write_text("#!/bin/sh\necho agentd 0.0.0\n")
    binary.chmod(0o755)
    result = _install(image, "--binary", str(binary))
    assert result.returncode == 0, result.stderr
    assert "cannot lock" not in result.stderr
    assert _entry(image, "passwd", "agentd") is not None
    assert _entry(image, "group", "agentd") is not None
    assert _entry(image, "passwd", "root") is not None
    assert (image / "usr/local/bin/agentd").read_bytes() == binary.read_bytes()
    assert f"installed agentd 0.0.0 as {image}/usr/local/bin/agentd" in result.stdout
    assert f"wrote {image}/etc/agentd/agentd.toml" in result.stdout
