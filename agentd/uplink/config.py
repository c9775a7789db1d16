"""Typed config of an uplink: the engine's keys (`UplinkSettings`, common to every transport)
and the MQTT transport's own (`MqttConfig`). A ``[uplinks.NAME]`` table is split by field name
between the two, like the common and own keys of a sensor.

Secrets never live in the config file: the password comes from ``password_file`` or from a
systemd credential (``password_credential`` names a file in ``$CREDENTIALS_DIRECTORY``), read
with `agentd.secrets`' rules.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from agentd.errors import ConfigError
from agentd.secrets import SecretError, read_credential, read_secret_file, valid_credential_name
from agentd.uplink.base import STREAMS, Stream

__all__ = [
    "Format",
    "MqttConfig",
    "MqttEndpoint",
    "UplinkSettings",
    "default_node",
    "read_password",
]

Format = Literal["msgpack", "json"]
#: a topic level we build from: no wildcards, separators or NUL, not empty
TopicLevel = Annotated[str, Meta(pattern=r"^[^/+#\x00]{1,128}$")]
Prefix = Annotated[str, Meta(pattern=r"^[^+#\x00]{1,256}$")]
_NODE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.:-]")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class UplinkSettings(_Section, frozen=True):
    """The engine's keys (transport-independent)."""

    plugin: str = "mqtt"
    enabled: bool = True
    #: this gateway's name in topics and envelopes; default: /etc/machine-id or the hostname
    node: TopicLevel | None = None
    prefix: Prefix = "agentd/v1"
    streams: tuple[Stream, ...] = STREAMS
    format: Format = "msgpack"
    #: batches in flight (sent, not acknowledged); never above the broker's Receive Maximum
    window: Annotated[int, Meta(ge=1, le=1024)] = 8
    #: a batch closes on whichever comes first
    batch_rows: Annotated[int, Meta(ge=1, le=65_535)] = 256
    batch_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 128 * 1024
    batch_interval: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    #: bytes/s of payload at most (a long outage must not saturate a cellular link); None: no cap
    catch_up_rate: Annotated[int, Meta(ge=1024)] | None = None
    #: keep rows past the PUBACK until the consumer's watermark on <prefix>/<node>/ack passes
    end_to_end: bool = False
    #: health turns degraded when the oldest unsent row is older than this (seconds)
    backlog_max_age: Annotated[float, Meta(gt=0)] | None = 300.0
    #: a batch not answered within this many seconds means the link is broken: reconnect
    ack_timeout: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    #: full-jitter reconnect backoff: sleep uniform(0, min(max, min * 2**attempt))
    reconnect_min: Annotated[float, Meta(gt=0, le=60)] = 0.5
    reconnect_max: Annotated[float, Meta(gt=0, le=3600)] = 60.0

    def __post_init__(self) -> None:
        if len(set(self.streams)) != len(self.streams):
            raise ValueError("streams: each stream at most once")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")

    def resolved_node(self) -> str:
        return self.node or default_node()


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


def default_node() -> str:
    """/etc/machine-id, else the hostname, made safe as one topic level."""
    try:
        node = Path("/etc/machine-id").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        node = ""
    node = node or socket.gethostname() or "agentd"
    return _NODE_CHARS.sub("_", node)[:128]


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
