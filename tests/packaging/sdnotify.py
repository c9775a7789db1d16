"""A fake systemd notify socket: the datagram socket a test binds and names in
``$NOTIFY_SOCKET``. Each message is kept with the kernel's receive time and the sender's PID
(``SO_TIMESTAMPNS`` and ``SO_PASSCRED``, as systemd reads them), so tests measure rates and
senders without depending on when they get round to reading."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Notification", "NotifySocket"]

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
_SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)


@dataclass
class Notification:
    at: float  #: kernel receive time (wall clock, seconds)
    pid: int  #: the sender
    fields: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""

    def __contains__(self, item: str) -> bool:
        key, _, value = item.partition("=")
        return self.fields.get(key) == value if value else key in self.fields


class NotifySocket:
    def __init__(self, path: str) -> None:
        """``path`` is a filesystem path, or ``@name`` for the abstract namespace."""
        self.address = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.messages: list[Notification] = []
        self._next = 0  # the first message wait_for has not looked at

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _read_one(self) -> Notification | None:
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, 256)
        except BlockingIOError:
            return None
        at, pid = time.time(), 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", payload[:16])
                at = sec + nsec / 1e9
            elif level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = {}
        for line in data.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        msg = Notification(at, pid, fields, data)
        self.messages.append(msg)
        return msg

    def drain(self) -> list[Notification]:
        """Read whatever has arrived; returns the new messages."""
        new = []
        while (msg := self._read_one()) is not None:
            new.append(msg)
        return new

    def skip(self) -> None:
        """Forget what arrived so far: later waits look at newer messages only."""
        self.drain()
        self._next = len(self.messages)

    def wait_for(
        self,
        match: str | Callable[[Notification], bool],
        timeout: float = 15.0,
        alive: Callable[[], str | None] | None = None,
    ) -> Notification:
        """The next message (after the last one waited for or collected) that contains
        ``KEY=VALUE`` or matches a predicate. ``alive`` returns an error text when the sender
        died (fail fast instead of waiting)."""
        pred = (lambda m: match in m) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            while self._next < len(self.messages):
                msg = self.messages[self._next]
                self._next += 1
                if pred(msg):
                    return msg
            if alive is not None and (problem := alive()):
                raise AssertionError(f"waiting for {match!r}: {problem}")
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [m.raw for m in self.messages[-10:]]
                raise AssertionError(f"no {match!r} notification within {timeout}s; last: {seen}")
            select.select([self.sock], [], [], min(left, 0.2))

    def collect(self, seconds: float) -> list[Notification]:
        """Everything that arrives within ``seconds`` from now (earlier unread ones skipped)."""
        self.skip()
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            select.select([self.sock], [], [], left)
            self.drain()
        out = self.messages[self._next :]
        self._next = len(self.messages)
        return out
