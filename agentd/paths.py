"""The one rule for agentd's directories and its control socket, shared by the daemon
(`config.resolve_state_dir` / `resolve_runtime_dir`) and agentctl (`client_socket`), so both
always agree on where the socket is.

state:   the explicit setting (--state-dir, [paths] state_dir), else $STATE_DIRECTORY (systemd's
         StateDirectory=), else /var/lib/agentd as root, else $XDG_STATE_HOME/agentd
         (~/.local/state/agentd)
runtime: the explicit setting (--runtime-dir, [paths] runtime_dir), else $RUNTIME_DIRECTORY,
         else /run/agentd as root, else $XDG_RUNTIME_DIR/agentd (/tmp/agentd-UID without a
         session)
socket:  <runtime>/agentd.sock; [control] socket overrides the name, an absolute one the path
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = [
    "SOCKET_NAME",
    "SYSTEM_RUNTIME_DIR",
    "client_socket",
    "config_file",
    "env_dir",
    "runtime_dir",
    "socket_path",
    "state_dir",
]

SOCKET_NAME: Final = "agentd.sock"
SYSTEM_STATE_DIR: Final = Path("/var/lib/agentd")
SYSTEM_RUNTIME_DIR: Final = Path("/run/agentd")
SYSTEM_CONFIG_DIR: Final = Path("/etc/agentd")


def env_dir(var: str) -> Path | None:
    # systemd may pass several colon-separated directories; the first is ours
    value = os.environ.get(var, "").split(":")[0]
    return Path(value) if value else None


def state_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = env_dir("STATE_DIRECTORY")
    if env:
        return env
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "agentd"


def runtime_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = env_dir("RUNTIME_DIRECTORY")
    if env:
        return env
    if os.geteuid() == 0:
        return SYSTEM_RUNTIME_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "agentd" if xdg else Path(f"/tmp/agentd-{os.geteuid()}")


def socket_path(runtime: Path, socket: str | None = None) -> Path:
    """The control socket in ``runtime`` (an absolute ``socket`` wins: Path joins so)."""
    return runtime / (socket or SOCKET_NAME)


def config_file() -> Path:
    """Where the config file is looked for: $CONFIGURATION_DIRECTORY (systemd's
    ConfigurationDirectory=) or /etc/agentd, then agentd.toml (it may not exist)."""
    return (env_dir("CONFIGURATION_DIRECTORY") or SYSTEM_CONFIG_DIR) / "agentd.toml"


def client_socket(socket: str | None = None, runtime: str | None = None) -> Path:
    """The socket agentctl talks to, given the config's ``[control] socket`` and ``[paths]
    runtime_dir``: the one a daemon with those settings run by this user listens on. When
    nothing decides the directory for a non-root user (no setting, no $RUNTIME_DIRECTORY) and
    that socket does not exist, the system daemon's (/run/agentd) is used if it exists: an
    operator in the socket's group reaches the service without --socket."""
    if socket and os.path.isabs(socket):
        return Path(socket)
    own = socket_path(runtime_dir(runtime), socket)
    if runtime or env_dir("RUNTIME_DIRECTORY") or os.geteuid() == 0:
        return own
    system = socket_path(SYSTEM_RUNTIME_DIR, socket)
    return system if not _exists(own) and _exists(system) else own


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:  # a directory this user may not search is as good as no socket
        return False
    return True
