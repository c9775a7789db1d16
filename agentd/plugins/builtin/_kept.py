"""A /proc or /sys file kept open and read whole from offset 0 on each `read` (the kernel
regenerates it): what the `net` and `system` sensors read every tick, without an open,
a decode and a close each time (issue #18)."""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import final

__all__ = ["KeptFile"]


@final
class KeptFile:
    """A /proc or /sys file kept open and read whole from offset 0 on each `read`; reopened
    once when the kept descriptor fails (an interface that went away and came back)."""

    __slots__ = ("__weakref__", "_fd", "_finalizer", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        #: closes the descriptor if the sensor is dropped without `stop` (a failed build)
        self._finalizer: weakref.finalize[[int], KeptFile] | None = None

    def read(self) -> bytes:
        for attempt in (0, 1):
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                self._finalizer = weakref.finalize(self, _close_quietly, self._fd)
            try:
                return _pread_all(self._fd)
            except OSError:
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        # detached first: the number may belong to another file once closed
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        fd, self._fd = self._fd, -1
        _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pread_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
