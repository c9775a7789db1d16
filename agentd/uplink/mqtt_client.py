"""The paho side of the ``mqtt`` transport and of the ``mqtt`` device plugins: the `Client`
subclass that owns its TLS handshake and reads ahead, `SocketDrive` (paho's socket driven from
the asyncio loop), the executor `Handoff` of a connect that may be abandoned, and the helpers
that turn paho's codes and errors into one-line reasons. `agentd.uplink.mqtt` and
`agentd.devices.mqtt_link` drive them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from typing import Any, Final

from paho.mqtt import client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "MISC_EVERY",
    "Client",
    "Handoff",
    "SocketDrive",
    "WrongVersion",
    "connack_reason",
    "oserror_text",
    "properties",
]

#: seconds between paho's loop_misc() calls (keepalive pings, timeouts)
MISC_EVERY: Final = 1.0


class Client(paho.Client):
    """paho's client with its TLS handshake owned: paho 2.1 leaks the SSL socket when the
    handshake fails (a wrong CA, a refused client certificate). Same steps otherwise: SNI and
    hostname checking by the context (check_hostname is always on here)."""

    #: paho reads a packet's header a byte at a time, one syscall each: read ahead instead
    _READ: Final = 65_536
    _rbuf: bytes = b""
    _rpos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(self._READ)  # BlockingIOError when nothing is there
            if not data:
                return data  # EOF
            self._rbuf, self._rpos = data, 0
        out = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(out)
        return out

    def buffered(self) -> bool:
        """Bytes already read from the socket but not yet parsed (the selector cannot see
        them)."""
        return self._rpos < len(self._rbuf)

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        ctx = self._ssl_context
        if ctx is None:  # pragma: no cover - tls_set_context always ran first
            tcp_sock.close()
            raise ValueError("no TLS context")
        ssl_sock = ctx.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


def properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


class Handoff:
    """The executor thread cannot be cancelled: if the connect is abandoned (timeout, stop)
    whoever comes last, the thread or the loop, closes the socket it made."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._done = False
        self._abandoned = False

    def finished(self) -> None:
        with self._lock:
            self._done = True
            if self._abandoned:
                self._close()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._done:
                self._close()

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            sock = self._client.socket()
            if sock is not None:
                sock.close()


class WrongVersion(Exception):
    pass


def connack_reason(rc: int, v5: bool) -> str:
    if v5:
        try:
            return str(ReasonCode(PacketTypes.CONNACK, identifier=rc))
        except KeyError:
            return "unknown reason"
    return paho.connack_string(rc)


def oserror_text(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class SocketDrive:
    """paho's socket driven from the asyncio loop, so every paho callback runs on the loop
    thread: the fd registered with ``add_reader`` (-> the subclass's ``_readable``) and, while
    paho has bytes queued, ``add_writer`` (-> ``loop_write``, through paho's
    ``on_socket_register_write`` hooks); a `MISC_EVERY` timer runs ``loop_misc``. The subclass
    sets its own paho callbacks, then calls `_drive`, and `_release` when the link ends."""

    _client: paho.Client | None
    _fd: int
    _misc: asyncio.TimerHandle | None
    _lost: asyncio.Future[str] | None

    def _drive(self, client: paho.Client, no_socket: type[Exception]) -> None:
        loop = asyncio.get_running_loop()
        sock = client.socket()
        if sock is None:
            raise no_socket("connect: no socket")
        self._fd = sock.fileno()
        if isinstance(sock, socket.socket):  # a reply must not wait out Nagle + delayed ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_socket_close = self._socket_close
        loop.add_reader(self._fd, self._readable)
        if client.want_write():
            loop.add_writer(self._fd, self._writable)
        self._misc = loop.call_later(MISC_EVERY, self._tick)

    def _readable(self) -> None:
        raise NotImplementedError

    def _writable(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    def _tick(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_misc()
        if self._client is client and self._lost is not None and not self._lost.done():
            self._misc = asyncio.get_running_loop().call_later(MISC_EVERY, self._tick)

    def _register_write(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().add_writer(self._fd, self._writable)

    def _unregister_write(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_writer(self._fd)

    def _socket_close(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        # paho calls this before it closes the fd: unregister while the number is still ours
        self._detach_fd()

    def _release(self) -> None:
        """Forget the link's client: stop the timer, release the fd, close the socket without
        paho calling back (the owner fails whatever waits on the link)."""
        client, self._client = self._client, None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self._detach_fd()
        if client is not None:
            client.on_disconnect = None
            client.on_socket_close = None
            client.on_socket_unregister_write = None
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()

    def _detach_fd(self) -> None:
        if self._fd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
            self._fd = -1
