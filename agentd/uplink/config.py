"""Typed config of an uplink: the engine's keys (`UplinkSettings`, common to every transport)
and the MQTT transport's own (`MqttConfig`). A ``[uplinks.NAME]`` table is split by field name
between the two, like the common and own keys of a sensor.

Secrets never live in the config file: the password comes from ``password_file`` or from a
systemd credential (``password_credential`` names a file in ``$CREDENTIALS_DIRECTORY``), read
with `agentd.secrets`' rules.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from agentd.config_plugins import UplinkCommon, default_node
from agentd.errors import ConfigError
from agentd.secrets import SecretError, read_credential, read_secret_file, valid_credential_name

__all__ = [
    "Format",
    "MqttConfig",
    "MqttEndpoint",
    "UplinkSettings",
    "default_node",
    "read_password",
]

Format = Literal["msgpack", "json"]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


#: the engine's keys are the uplink kind's common keys (agentd.config_plugins), so the
#: config loader splits a ``[uplinks.NAME]`` table without importing this package
UplinkSettings = UplinkCommon


class MqttConfig(_Section, frozen=True):
    """The ``mqtt`` transport's keys."""

    url: str
    #: CA bundle to verify the broker with (default: the system's); implies TLS
    ca: str | None = None
    #: client certificate and key for mutual TLS
    cert: str | None = None
    key: str | None = None
    #: TLS without an mqtts:// URL (e.g. a non-standard port)
    tls: bool = False
    username: str | None = None
    password_file: str | None = None
    #: a systemd credential name (LoadCredential=NAME:...): $CREDENTIALS_DIRECTORY/NAME
    password_credential: str | None = None
    #: "auto": MQTT 5, falling back to 3.1.1 if the broker does not speak 5
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive: Annotated[int, Meta(ge=5, le=3600)] = 30
    connect_timeout: Annotated[float, Meta(gt=0, le=120)] = 10.0
    client_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None

    def __post_init__(self) -> None:
        self.endpoint()  # the URL is checked when the config is loaded, not at connect
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (mutual TLS)")
        if self.password_file and self.password_credential:
            raise ValueError("password_file and password_credential: give one")
        if (self.password_file or self.password_credential) and not self.username:
            raise ValueError("a password needs a username")
        if self.password_credential and not valid_credential_name(self.password_credential):
            raise ValueError("password_credential must be a plain credential name")

    def endpoint(self) -> MqttEndpoint:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"url: scheme must be mqtt:// or mqtts://, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("url: no host")
        if parts.username or parts.password:
            raise ValueError("url: no credentials in the URL (username, password_file)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("url: only mqtt[s]://host[:port]")
        tls = parts.scheme == "mqtts" or self.tls or self.ca is not None or self.cert is not None
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        return MqttEndpoint(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls)


class MqttEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    tls: bool


def read_password(config: MqttConfig) -> str | None:
    """The broker password, read at each connect (so a rotated credential is picked up), with
    the house rules for secret files (`agentd.secrets`: a regular file, not readable by other
    users, one line). Raises ConfigError naming the file, never showing its content."""
    try:
        if config.password_credential:
            return read_credential(config.password_credential)
        if config.password_file:
            return read_secret_file(config.password_file)
    except SecretError as exc:
        raise ConfigError([f"mqtt password: {exc}"]) from None
    return None
