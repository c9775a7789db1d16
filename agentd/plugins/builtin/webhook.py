"""`webhook` actuator: HTTP POST of the action as JSON to a configured URL, over asyncio streams
(HTTP/1.1, one connection per call, ``Connection: close``; https through the ssl module with
certificate checks). A 2xx answer is success; anything else, a refused connection or a timeout
fails the call, and the instance's ``retries``/``retry_on`` decide whether it is tried again.
No extra dependency: a frozen binary has everything it needs.

The body is ``{"actuator", "action", "params", "priority", "source", "key", "sent_at"}``; the
idempotency key also goes in an ``Idempotency-Key`` header so the receiver can deduplicate.

Headers are secrets (``headers`` is marked, so ``agentd.secrets.redact`` hides its values), and
a token need not sit in the config at all: ``header_credentials`` takes a header's value from a
systemd credential (``$CREDENTIALS_DIRECTORY/NAME``), ``header_files`` from a file only agentd
can read; both are read when the actuator starts. An error never quotes a secret: the URL is
shown without its ``user:password@``, and a response body is quoted only as a short excerpt
with its tags stripped and every header value taken out (the journalled body too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import time
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from agentd import __version__
from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.secrets import (
    SECRET,
    SECRET_URL,
    SecretError,
    read_credential,
    read_secret_file,
    redact_text,
    secret_values,
    valid_credential_name,
)

__all__ = ["EXCERPT", "SPEC", "HTTPError", "WebhookActuator", "WebhookConfig", "post_json"]

#: characters of a response body quoted in an error
EXCERPT = 80
_TAG = re.compile(r"<[^<>]{0,512}>")


class HTTPError(Exception):
    pass


def _bad_header(name: str, value: str = "") -> bool:
    return not name or any(ch in name + value for ch in "\r\n\x00") or ":" in name


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: the ``user:password@`` part of it is secret (and is not sent: use a header)
    url: Annotated[str, SECRET_URL]
    #: extra request headers (e.g. an Authorization token); all values are secret
    headers: Annotated[dict[str, str], SECRET] = {}
    #: header -> systemd credential name: the value is ``$CREDENTIALS_DIRECTORY/NAME``
    #: (``LoadCredential=NAME:/etc/agentd/NAME`` in the unit)
    header_credentials: dict[str, str] = {}
    #: header -> absolute path of a file holding the value (not readable by other users)
    header_files: dict[str, str] = {}
    #: seconds for connect + request + response
    request_timeout: Annotated[float, Meta(gt=0, le=600)] = 10.0
    #: bytes of the response body kept for the journal (and read at most)
    max_response: Annotated[int, Meta(ge=0, le=16 * 1024 * 1024)] = 4096
    #: https: verify the server certificate (against ``ca_file`` or the system store)
    verify: bool = True
    ca_file: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"`url` {self.url!r} is not an http:// or https:// URL")
        for name, value in self.headers.items():
            if _bad_header(name, value):
                raise ValueError(f"`headers.{name}`: not a valid header")
        seen = {n.lower() for n in self.headers}
        for table, sources in (
            ("header_credentials", self.header_credentials),
            ("header_files", self.header_files),
        ):
            for name, source in sources.items():
                if _bad_header(name):
                    raise ValueError(f"`{table}.{name}`: not a valid header name")
                if name.lower() in seen:
                    raise ValueError(f"`{table}.{name}`: the header is set twice")
                seen.add(name.lower())
                if table == "header_files" and not os.path.isabs(source):
                    raise ValueError(f"`{table}.{name}`: {source!r} is not an absolute path")
                if table == "header_credentials" and not valid_credential_name(source):
                    raise ValueError(f"`{table}.{name}`: {source!r} is not a credential name")


class WebhookParams(msgspec.Struct, kw_only=True):
    """Any params are sent as they are."""


class _Body(msgspec.Struct, kw_only=True):
    actuator: str
    action: str
    params: dict[str, object]
    priority: int
    source: str
    key: str | None
    sent_at: float


async def post_json(
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    max_response: int,
    ssl_context: ssl.SSLContext | None,
) -> tuple[int, bytes]:
    """POST ``body`` and return (status, the first ``max_response`` bytes of the body)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl_context if https else None, server_hostname=host if https else None
    )
    try:
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {netloc}",
            f"User-Agent: agentd/{__version__}",
            "Content-Type: application/json",
            "Accept: */*",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.decode("latin-1").split(None, 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise HTTPError(f"not an HTTP response: {status_line[:60]!r}")
        status = int(fields[1])
        length: int | None = None
        chunked = False
        for _ in range(100):  # at most 100 header lines
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        data = await _read_body(reader, length, chunked, max_response)
        return status, data
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _read_upto(reader: asyncio.StreamReader, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await reader.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def _read_body(
    reader: asyncio.StreamReader, length: int | None, chunked: bool, cap: int
) -> bytes:
    """At most ``cap`` bytes of the body; the rest is never read (the connection closes)."""
    if not chunked:
        return await _read_upto(reader, cap if length is None else min(length, cap))
    out = bytearray()
    while len(out) < cap:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            break
        if size <= 0:
            break
        out += await _read_upto(reader, min(size, cap - len(out)))
        if len(out) >= cap:
            break
        await reader.readline()  # the CRLF after the chunk
    return bytes(out)


class WebhookActuator:
    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.ssl: ssl.SSLContext | None = None
        if urlsplit(config.url).scheme == "https":
            self.ssl = ssl.create_default_context(cafile=config.ca_file)
            if not config.verify:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        parts = urlsplit(config.url)
        #: the URL as errors show it: never its user:password
        self.shown_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        #: header values read from credentials and files (at start)
        self.secret_headers: dict[str, str] | None = None
        self.secrets = secret_values(config)

    async def start(self) -> None:
        await asyncio.to_thread(self._load_secrets)

    def _load_secrets(self) -> None:
        loaded: dict[str, str] = {}
        c = self.config
        for table, sources, read in (
            ("header_credentials", c.header_credentials, read_credential),
            ("header_files", c.header_files, read_secret_file),
        ):
            for name, source in sources.items():
                try:
                    loaded[name] = read(source)
                except SecretError as exc:
                    raise SecretError(f"{table}.{name}: {exc}") from None
        self.secret_headers = loaded
        self.secrets = sorted(
            {*secret_values(c), *loaded.values(), *(w for v in loaded.values() for w in v.split())},
            key=len,
            reverse=True,
        )

    def _excerpt(self, text: str) -> str:
        """A short quotable piece of a response body: no tags, no secrets, one line."""
        plain = " ".join(_TAG.sub(" ", text[: 16 * EXCERPT]).split())
        plain = "".join(ch for ch in redact_text(plain, self.secrets) if ch.isprintable())
        return plain[:EXCERPT]

    async def act(self, action: Action) -> ActuatorReply:
        c = self.config
        body = msgspec.json.encode(
            _Body(
                actuator=action.actuator,
                action=action.name,
                params=action.params,
                priority=action.priority,
                source=action.source,
                key=action.key,
                sent_at=time.time(),
            )
        )
        if self.secret_headers is None:
            await asyncio.to_thread(self._load_secrets)
        headers = {**c.headers, **(self.secret_headers or {})}
        if action.key and action.key.isprintable() and action.key.isascii():
            headers["Idempotency-Key"] = action.key  # never a CR/LF into the request head
        try:
            async with asyncio.timeout(c.request_timeout):
                status, data = await post_json(
                    c.url, body, headers=headers, max_response=c.max_response, ssl_context=self.ssl
                )
        except TimeoutError:
            raise TimeoutError(
                f"no answer from {self.shown_url} within {c.request_timeout:g}s"
            ) from None
        text = data.decode("utf-8", "replace")
        if not 200 <= status < 300:
            raise HTTPError(f"{self.shown_url} answered {status}: {self._excerpt(text)}")
        # a server may echo the request: the journal keeps the body without the secrets
        return ActuatorReply(output={"status": status, "body": redact_text(text, self.secrets)})


SPEC = PluginSpec(
    name="webhook",
    kind="actuator",
    factory=WebhookActuator,
    config_type=WebhookConfig,
    description="POST the action as JSON to a URL (http/https, timeout, retries)",
    actions={"*": WebhookParams},
)
