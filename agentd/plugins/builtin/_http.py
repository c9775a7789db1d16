"""The HTTP client the `webhook` and `openapi` actuators share: one request over asyncio streams
(HTTP/1.1, one connection per call, ``Connection: close``; https through the ssl module with
certificate checks), the header keys both configs have, and the secret handling around them.
No extra dependency: a frozen binary has everything it needs.

Headers are secrets (``headers`` is marked, so ``agentd.secrets.redact`` hides its values), and
a token need not sit in the config at all: ``header_credentials`` takes a header's value from a
systemd credential (``$CREDENTIALS_DIRECTORY/NAME``), ``header_files`` from a file only agentd
can read; both are read when the actuator starts (`HTTPClient.load_secrets`). An error never
quotes a secret: the URL is shown without its ``user:password@``, and a response body is quoted
only as a short excerpt with its tags stripped and every header value taken out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections.abc import Callable
from typing import Annotated, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from agentd import __version__
from agentd.secrets import (
    SECRET,
    SecretError,
    read_credential,
    read_secret_file,
    redact_text,
    secret_values,
    valid_credential_name,
)

__all__ = [
    "EXCERPT",
    "MAX_HEADER_LINES",
    "HTTPClient",
    "HTTPClientConfig",
    "HTTPError",
    "Response",
    "bad_header",
    "request",
    "shown_url",
]

#: characters of a response body quoted in an error
EXCERPT = 80
#: response header lines read at most (each is bounded by the stream's 64 KiB line limit)
MAX_HEADER_LINES = 100
_TAG = re.compile(r"<[^<>]{0,512}>")


class HTTPError(Exception):
    pass


def bad_header(name: str, value: str = "") -> bool:
    """A header that could not go into a request head as it is (CR/LF/NUL, a colon)."""
    return not name or any(ch in name + value for ch in "\r\n\x00") or ":" in name


class HTTPClientConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The keys of an actuator that talks HTTP. A subclass calls `check_headers` from its
    ``__post_init__``."""

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

    def check_headers(self) -> None:
        """Raise ValueError (naming the key) for a header that cannot be sent."""
        for name, value in self.headers.items():
            if bad_header(name, value):
                raise ValueError(f"`headers.{name}`: not a valid header")
        seen = {n.lower() for n in self.headers}
        for table, sources in (
            ("header_credentials", self.header_credentials),
            ("header_files", self.header_files),
        ):
            for name, source in sources.items():
                if bad_header(name):
                    raise ValueError(f"`{table}.{name}`: not a valid header name")
                if name.lower() in seen:
                    raise ValueError(f"`{table}.{name}`: the header is set twice")
                seen.add(name.lower())
                if table == "header_files" and not os.path.isabs(source):
                    raise ValueError(f"`{table}.{name}`: {source!r} is not an absolute path")
                if table == "header_credentials" and not valid_credential_name(source):
                    raise ValueError(f"`{table}.{name}`: {source!r} is not a credential name")

    def reload_key(self) -> str:
        """What a reload compares besides the table (`PluginSupervisor.rebuild`): a digest of
        the header values read from files and credentials, so a rotated token file followed by
        ``systemctl reload`` rebuilds the actuator, which reads it again. The digest, never the
        secret, is kept; one that cannot be read counts by its error."""
        parts: list[str] = []
        sources: list[tuple[str, str, Callable[[str], str]]] = [
            (f"file:{p}", p, read_secret_file) for p in self.header_files.values()
        ]
        sources += [(f"cred:{c}", c, read_credential) for c in self.header_credentials.values()]
        for label, source, read in sorted(sources, key=lambda s: s[0]):
            try:
                value = read(source)
            except SecretError as exc:
                value = f"unreadable: {exc}"
            parts.append(f"{label}\0{len(value)}\0{value}\0")
        if not parts:
            return ""
        from agentd.plugins.builtin._template import sha256_hex  # not hashlib (issue #18)

        return sha256_hex("".join(parts).encode())

    def header_names(self) -> set[str]:
        """Every configured header name, lower-cased."""
        return {n.lower() for n in (*self.headers, *self.header_credentials, *self.header_files)}


def shown_url(url: str) -> str:
    """``url`` as errors show it: never its user:password."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Response(NamedTuple):
    status: int
    #: the media type, lower-cased, without parameters ("" when none was sent)
    content_type: str
    #: at most ``max_response`` bytes of the body
    body: bytes
    #: the body was longer than ``max_response`` (the rest was never read)
    truncated: bool


async def request(
    method: str,
    url: str,
    body: bytes | None,
    *,
    headers: dict[str, str],
    max_response: int,
    ssl_context: ssl.SSLContext | None,
    content_type: str = "application/json",
) -> Response:
    """Send one request (``url`` carries the path and query, already encoded) and read the
    status, the headers and the first ``max_response`` bytes of the body."""
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
        head = [f"{method} {path} HTTP/1.1", f"Host: {netloc}", f"User-Agent: agentd/{__version__}"]
        if body is not None:
            head.append(f"Content-Type: {content_type}")
        head.append("Accept: */*")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        head.append("Connection: close")
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.decode("latin-1").split(None, 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise HTTPError(f"not an HTTP response: {status_line[:60]!r}")
        status = int(fields[1])
        length: int | None = None
        chunked = False
        media = ""
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "content-type":
                media = value.split(";", 1)[0].strip().lower()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, media, b"", truncated=False)
        # one byte more than kept tells a body that was cut from one that fit
        data = await _read_body(reader, length, chunked, max_response + 1)
        return Response(status, media, data[:max_response], truncated=len(data) > max_response)
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


class HTTPClient:
    """One actuator's view of its server: the TLS context, the headers (with those read from
    credentials and files), and how its errors quote the server without a secret."""

    def __init__(self, config: HTTPClientConfig, url: str) -> None:
        self.config = config
        self.ssl: ssl.SSLContext | None = None
        if urlsplit(url).scheme == "https":
            self.ssl = ssl.create_default_context(cafile=config.ca_file)
            if not config.verify:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.shown_url = shown_url(url)
        #: header values read from credentials and files (at start)
        self.secret_headers: dict[str, str] | None = None
        self.secrets = secret_values(config)

    def load_secrets(self) -> None:
        """Read the credential and file headers (blocking: run it in a thread)."""
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

    def redact(self, text: str) -> str:
        return redact_text(text, self.secrets)

    def excerpt(self, text: str) -> str:
        """A short quotable piece of a response body: no tags, no secrets, one line."""
        plain = " ".join(_TAG.sub(" ", text[: 16 * EXCERPT]).split())
        plain = "".join(ch for ch in self.redact(plain) if ch.isprintable())
        return plain[:EXCERPT]

    async def send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        """One request with the configured headers, within ``request_timeout``."""
        c = self.config
        if self.secret_headers is None:
            await asyncio.to_thread(self.load_secrets)
        headers = {**(extra_headers or {}), **c.headers, **(self.secret_headers or {})}
        try:
            async with asyncio.timeout(c.request_timeout):
                return await request(
                    method,
                    url,
                    body,
                    headers=headers,
                    max_response=c.max_response,
                    ssl_context=self.ssl,
                )
        except TimeoutError:
            raise TimeoutError(
                f"no answer from {self.shown_url} within {c.request_timeout:g}s"
            ) from None
