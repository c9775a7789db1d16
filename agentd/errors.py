"""One exception tree. Every error carries a one-line message a user can act on."""

from __future__ import annotations

__all__ = [
    "AgentdError",
    "AlreadyRunning",
    "ConfigError",
    "PluginError",
    "ProtocolError",
    "StoreError",
    "VersionConflict",
]


class AgentdError(Exception):
    """Root of agentd's errors; `str(err)` is the one-line message shown to users."""


class ConfigError(AgentdError):
    """The configuration is invalid. `errors` has one line per problem, naming the key path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors) if self.errors else "invalid configuration")


class PluginError(AgentdError):
    """A plugin could not be registered, built or started."""

    def __init__(self, plugin: str, message: str, origin: str = "builtin") -> None:
        self.plugin = plugin
        self.origin = origin
        super().__init__(f"plugin {plugin!r} ({origin}): {message}")


class AlreadyRunning(AgentdError):
    """Another agentd holds the single-instance lock."""

    def __init__(self, lock_path: str, pid: int | None) -> None:
        self.lock_path = lock_path
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"another agentd ({holder}) is running: it holds {lock_path}")


class StoreError(AgentdError):
    """The local database cannot be opened, read or written."""


class VersionConflict(StoreError):
    """A compare-and-set write found another version than the one expected."""

    def __init__(self, session_id: str, expected: int | None, current: int | None) -> None:
        self.session_id = session_id
        self.expected = expected
        self.current = current
        wanted = "it not to exist" if not expected else f"version {expected}"
        found = "it does not exist" if current is None else f"current version is {current}"
        super().__init__(f"session {session_id!r}: expected {wanted}, {found}")


class ProtocolError(AgentdError):
    """A control-plane peer sent something that is not a valid frame or request."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
