"""The command signature key: from ``[commands] key_file`` or a systemd credential, read when
a command is checked (so a rotated key is picked up), never logged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from agentd.config import CommandsConfig
from agentd.errors import ConfigError

__all__ = ["MAX_KEY", "read_key"]

MAX_KEY: Final = 4096


def read_key(config: CommandsConfig) -> bytes | None:
    """The HMAC key (surrounding whitespace stripped), None if none is configured. Raises
    ConfigError naming the file, never its content."""
    if config.key_credential:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(
                [f"key_credential {config.key_credential!r}: $CREDENTIALS_DIRECTORY is not set"]
            )
        path = Path(creds) / config.key_credential
    elif config.key_file:
        path = Path(config.key_file)
    else:
        return None
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_KEY + 1)
    except OSError as exc:
        raise ConfigError([f"command key {path}: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_KEY:
        raise ConfigError([f"command key {path}: longer than {MAX_KEY} bytes"])
    key = raw.strip()
    if len(key) < 16:
        raise ConfigError([f"command key {path}: shorter than 16 bytes"])
    return key
