"""The paho side of the ``mqtt`` transport: the `Client` subclass that owns its TLS handshake and
reads ahead, the executor `Handoff` of a connect that may be abandoned, and the helpers that
turn paho's codes and errors into one-line reasons. `agentd.uplink.mqtt` drives them."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Final

from paho.mqtt import client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Client", "Handoff", "WrongVersion", "connack_reason", "oserror_text", "properties"]


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
