"""The command signature key: from ``[commands] key_file`` or a systemd credential, read with
`agentd.secrets` like every secret (a file other users can read is refused), at each check so
a rotated key is picked up; never logged."""

from __future__ import annotations

from typing import Final

from agentd.config import CommandsConfig
from agentd.errors import ConfigError
from agentd.secrets import SecretError, read_credential, read_secret_file

__all__ = ["MIN_KEY", "read_key"]

#: an HMAC-SHA256 key shorter than this is refused (RFC 2104: at least the output length / 2)
MIN_KEY: Final = 16


def read_key(config: CommandsConfig) -> bytes | None:
    """The HMAC key, None if none is configured. Raises ConfigError naming the file, never
    its content."""
    try:
        if config.key_credential:
            text = read_credential(config.key_credential)
        elif config.key_file:
            text = read_secret_file(config.key_file)
        else:
            return None
    except SecretError as exc:
        raise ConfigError([f"command key: {exc}"]) from None
    key = text.strip().encode()
    if len(key) < MIN_KEY:
        raise ConfigError([f"command key: shorter than {MIN_KEY} bytes"])
    return key
