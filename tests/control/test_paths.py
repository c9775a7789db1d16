"""agentctl's default socket and the daemon's socket come from the one rule in agentd/paths.py:
for every way the config and the environment can place it, they agree."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from agentd import config as cfg
from agentd import paths
from agentd.cli.agentctl import default_socket
from agentd.plugins.registry import default_registry

CASES = [
    "",
    "[control]\nsocket = 'other.sock'\n",
    "[paths]\nruntime_dir = '{base}/rt'\n",
    "[paths]\nruntime_dir = '{base}/rt'\n[control]\nsocket = 'x.sock'\n",
    "[control]\nsocket = '{base}/abs.sock'\n",
]


def daemon_socket(text: str) -> str:
    """Where a daemon started with this config file listens (Daemon._start_control)."""
    conf = cfg.loads(text + "[sensors.system]\n", default_registry)
    return str(paths.socket_path(cfg.resolve_runtime_dir(conf), conf.control.socket))


def both(conf_dir: Path, text: str) -> tuple[str, str]:
    (conf_dir / "agentd.toml").write_text(text + "[sensors.system]\n")
    return default_socket(), daemon_socket(text)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("AGENTD_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(conf_dir))
    return tmp_path


@pytest.mark.parametrize("text", CASES)
def test_agentctl_and_agentd_agree(env: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    text = text.format(base=env)
    ctl_side, daemon_side = both(env / "etc", text)
    assert ctl_side == daemon_side
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{env}/systemd-rt:{env}/second")
    ctl_side, daemon_side = both(env / "etc", text)
    assert ctl_side == daemon_side
    if "runtime_dir" not in text and "abs.sock" not in text:
        assert ctl_side.startswith(f"{env}/systemd-rt/")


def test_agentd_socket_env_wins(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_SOCKET", "/some/where.sock")
    assert default_socket() == "/some/where.sock"


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to another user")
def test_a_non_root_user_agrees_too(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a non-root user (XDG_RUNTIME_DIR, else /tmp/agentd-UID), in a forked child."""
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(env / "xdg"))
    (env / "etc" / "agentd.toml").write_text("[sensors.system]\n")
    os.chmod(env, 0o755)
    os.chmod(env / "etc", 0o755)
    os.chmod(env / "etc" / "agentd.toml", 0o644)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            line = f"{default_socket()}\n{daemon_socket('')}\n"
            monkeypatch.delenv("XDG_RUNTIME_DIR")
            line += f"{default_socket()}\n{daemon_socket('')}\n"
            os.write(w, line.encode())
            code = 0
        except BaseException as exc:
            os.write(w, f"{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    with open(r) as f:
        lines = f.read().splitlines()
    _, status = os.waitpid(pid, 0)
    assert status == 0, lines
    assert lines == [
        f"{env}/xdg/agentd/agentd.sock",
        f"{env}/xdg/agentd/agentd.sock",
        f"/tmp/agentd-{nobody.pw_uid}/agentd.sock",
        f"/tmp/agentd-{nobody.pw_uid}/agentd.sock",
    ]
