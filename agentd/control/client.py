"""The control client agentctl uses: blocking sockets, no asyncio, no daemon imports, so
``agentctl status`` starts and answers fast.

    with Client("/run/agentd/agentd.sock") as c:
        c.call("status")

A third-party client needs only docs/protocol.md; this one is the reference.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import struct
from collections.abc import Iterator
from typing import TypeVar

import msgspec

from agentd.control.protocol import (
    NIL,
    PROTOCOL_VERSION,
    FrameBuffer,
    FrameTooLarge,
    HelloInfo,
    Message,
    Request,
    decode_message,
    encode_frame,
)
from agentd.paths import trusted_server_uids

__all__ = [
    "Client",
    "ConnectionLost",
    "ControlError",
    "NotRunning",
    "PermissionDenied",
    "RemoteError",
    "UntrustedServer",
    "new_traceparent",
]

T = TypeVar("T")

_PEERCRED = struct.Struct("3i")

#: a response can be as large as the server's max_frame (at most 64 MiB by config)
CLIENT_MAX_FRAME = 64 * 1024 * 1024


class ControlError(Exception):
    """Anything that kept a request from getting an answer."""


class NotRunning(ControlError):
    def __init__(self, path: str, why: str = "no socket at") -> None:
        self.path = path
        super().__init__(f"agentd is not running ({why} {path})")


class PermissionDenied(ControlError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"permission denied: cannot connect to {path} "
            "(run as root, as agentd's user, or as a member of the socket's group)"
        )


class UntrustedServer(PermissionDenied):
    """The process listening on the socket is not agentd's: another user's."""

    def __init__(self, path: str, uid: int) -> None:
        self.path = path
        self.uid = uid
        ControlError.__init__(
            self,
            f"refusing {path}: the process listening on it runs as uid {uid}, not as root, "
            "this user or the owner of its directory (another user's socket?); nothing was sent",
        )


class ConnectionLost(ControlError):
    pass


class RemoteError(ControlError):
    """The daemon answered with ``error``."""

    def __init__(self, code: str, message: str, details: list[str] | None = None) -> None:
        self.code = code
        self.message = message
        self.details = details or []
        super().__init__(message)


def new_traceparent() -> str:
    """A fresh W3C traceparent (sampled): one per agentctl invocation."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class Client:
    def __init__(
        self, path: str | os.PathLike[str], timeout: float | None = 30.0, traceparent: str = ""
    ) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.traceparent = traceparent or new_traceparent()
        self._sock: socket.socket | None = None
        self._frames = FrameBuffer(CLIENT_MAX_FRAME)
        self._ids = itertools.count(1)
        #: answers read while waiting for another id (pipelining)
        self._early: dict[int | str | None, Message] = {}

    # -- connection --------------------------------------------------------------------------
    def connect(self) -> Client:
        if self._sock is not None:
            return self
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise NotRunning(self.path) from None
        except ConnectionRefusedError:
            sock.close()
            raise NotRunning(self.path, "nobody listening on the socket at") from None
        except PermissionError:
            sock.close()
            raise PermissionDenied(self.path) from None
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENOTDIR, errno.ENOTSOCK):
                raise NotRunning(self.path) from None
            raise ControlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        try:
            self._check_server(sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return self

    def _check_server(self, sock: socket.socket) -> None:
        """Nothing is sent (a session's state, a secret) before we know who listens: root,
        this user, or the user root gave the socket's directory to (`paths.trusted_server_uids`).
        Another user's socket planted in a shared /tmp directory is refused."""
        _, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid not in trusted_server_uids(self.path):
            raise UntrustedServer(self.path, uid)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------
    def send(self, cmd: str, args: dict[str, object] | None = None) -> int:
        """Send one request without waiting; returns its id."""
        rid = next(self._ids)
        self._write(self._frame(rid, cmd, args))
        return rid

    def send_many(self, requests: list[tuple[str, dict[str, object] | None]]) -> list[int]:
        """Pipeline several requests in one write; returns their ids."""
        ids = [next(self._ids) for _ in requests]
        self._write(b"".join(self._frame(i, c, a) for i, (c, a) in zip(ids, requests, strict=True)))
        return ids

    def call(self, cmd: str, args: dict[str, object] | None = None) -> object:
        """Send a request and return its result as plain msgpack values (maps, lists, ...);
        raises `RemoteError` for an error answer. `call_as` decodes into a reply Struct."""
        return msgspec.msgpack.decode(self.call_raw(cmd, args))

    def call_as(self, cmd: str, type: type[T], args: dict[str, object] | None = None) -> T:
        """Send a request and decode its result into ``type`` (a reply Struct from
        agentd/model.py or agentd/control/protocol.py, or a list of them)."""
        return msgspec.msgpack.decode(self.call_raw(cmd, args), type=type)

    def call_raw(self, cmd: str, args: dict[str, object] | None = None) -> msgspec.Raw:
        """The result still encoded, for a caller that decodes it twice (typed and plain)."""
        return self.result_raw(self.wait(self.send(cmd, args)))

    def hello(self) -> HelloInfo:
        return self.call_as(
            "hello", HelloInfo, {"protocol": PROTOCOL_VERSION, "client": "agentctl"}
        )

    @staticmethod
    def result_raw(message: Message) -> msgspec.Raw:
        if not isinstance(message.error, msgspec.UnsetType):
            e = message.error
            raise RemoteError(e.code, e.message, list(e.details))
        return NIL if isinstance(message.result, msgspec.UnsetType) else message.result

    @classmethod
    def result(cls, message: Message) -> object:
        return msgspec.msgpack.decode(cls.result_raw(message))

    def wait(self, rid: int | str) -> Message:
        """The answer to request ``rid`` (answers to other ids are kept for later)."""
        if rid in self._early:
            return self._early.pop(rid)
        while True:
            message = self.read()
            if message.id == rid and isinstance(message.event, msgspec.UnsetType):
                return message
            if message.id is None and not isinstance(message.error, msgspec.UnsetType):
                # a connection-level error (busy, bad_frame): it answers whatever we asked
                return message
            if isinstance(message.event, msgspec.UnsetType):
                self._early[message.id] = message

    def read(self) -> Message:
        """The next frame from the server (a response or an event)."""
        while True:
            try:
                body = self._frames.next()
            except FrameTooLarge as exc:
                raise ConnectionLost(f"the daemon sent an oversized frame: {exc}") from None
            if body is not None:
                try:
                    return decode_message(body)
                except msgspec.MsgspecError as exc:
                    raise ConnectionLost(f"the daemon sent a malformed frame: {exc}") from None
            sock = self._require()
            try:
                data = sock.recv(256 * 1024)
            except TimeoutError:
                raise ConnectionLost(
                    f"no answer from agentd within {self.timeout:g}s ({self.path})"
                ) from None
            except OSError as exc:
                raise ConnectionLost(f"connection to agentd lost: {exc.strerror or exc}") from None
            if not data:
                raise ConnectionLost("agentd closed the connection")
            self._frames.feed(data)

    def events(self) -> Iterator[Message]:
        """Frames as they come (after a ``watch``): blocks without a timeout."""
        self._require().settimeout(None)
        while True:
            yield self.read()

    # -- internals ---------------------------------------------------------------------------
    def _refusal(self) -> RemoteError | None:
        """The connection-level error the server sent before closing, if one is buffered."""
        try:
            message = self.read()
        except ControlError:
            return None
        if message.id is None and not isinstance(message.error, msgspec.UnsetType):
            e = message.error
            return RemoteError(e.code, e.message, list(e.details))
        return None

    def _frame(self, rid: int, cmd: str, args: dict[str, object] | None) -> bytes:
        return encode_frame(Request(id=rid, cmd=cmd, args=args or {}, traceparent=self.traceparent))

    def _require(self) -> socket.socket:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        return self._sock

    def _write(self, data: bytes) -> None:
        try:
            self._require().sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # a refused connection (busy, shutting down) was told why before it was closed
            refusal = self._refusal()
            if refusal is not None:
                raise refusal from None
            raise ConnectionLost(f"connection to agentd lost: {exc.strerror}") from None
        except TimeoutError:
            raise ConnectionLost(
                f"agentd did not take the request within {self.timeout:g}s"
            ) from None
