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

Ownership: the daemon refuses a runtime or state directory that is not owned by its user (or
root) or that other users may write (`check_private_dir`): in a shared /tmp another user could
have made it first and planted a symlink or a socket of their own. agentctl sends nothing to a
server whose peer uid it does not trust (`trusted_server_uids`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from agentd.errors import AgentdError

__all__ = [
    "SOCKET_NAME",
    "SYSTEM_RUNTIME_DIR",
    "UnsafeDirectory",
    "check_private_dir",
    "client_socket",
    "config_file",
    "env_dir",
    "runtime_dir",
    "socket_path",
    "state_dir",
    "trusted_server_uids",
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
    except PermissionError:
        # there is something this user may not reach: connecting says "permission denied"
        # (exit 4), which tells an operator more than "not running"
        return os.path.exists(path.parent)
    except OSError:
        return False
    return True


class UnsafeDirectory(AgentdError):
    """A runtime or state directory another user controls (or could)."""


def check_private_dir(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a directory owned by us (or root) that no other user may
    write. Symlinks are followed (/var/run -> /run): what counts is the directory reached."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnsafeDirectory(f"cannot check the {what} directory {path}: {exc.strerror}") from None
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"refusing the {what} directory {path}: it is not a directory")
    if st.st_uid not in (me, 0):
        raise UnsafeDirectory(
            f"refusing the {what} directory {path}: it is owned by uid {st.st_uid}, not by "
            f"this user (uid {me}); remove it or choose another with --{what}-dir"
        )
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeDirectory(
            f"refusing the {what} directory {path}: other users may write to it (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); chmod o-w it or choose another with --{what}-dir"
        )


def trusted_server_uids(socket: str) -> set[int]:
    """The uids agentctl accepts at the other end of ``socket``: root, itself, and the owner
    of the socket's directory when only root could have given it that directory (its parent
    is root's and not writable by others: /run/agentd under ``User=agentd``)."""
    trusted = {0, os.geteuid()}
    directory = os.path.dirname(os.path.abspath(socket))
    try:
        st = os.stat(directory)
        parent = os.stat(os.path.dirname(directory))
    except OSError:
        return trusted
    if parent.st_uid == 0 and not parent.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        trusted.add(st.st_uid)
    return trusted
