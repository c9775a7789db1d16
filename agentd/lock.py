"""The single-instance lock: ``flock`` on a file in the runtime directory. The kernel drops the
lock when the process dies, so a crashed agentd never blocks the next one."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import final

from agentd.errors import AlreadyRunning, StoreError

__all__ = ["InstanceLock"]


@final
class InstanceLock:
    __slots__ = ("_fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            # never follow a symlink: one planted there would have us truncate its target
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                0o644,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(
                    f"refusing the lock file {self.path}: it is a symlink (not followed)"
                ) from None
            raise StoreError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise StoreError(
                f"refusing the lock file {self.path}: not a regular file of this user's"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = int(os.read(fd, 32).decode().strip() or 0) or None
            except ValueError:
                pid = None
            os.close(fd)
            raise AlreadyRunning(str(self.path), pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock; the file stays (removing it would race)
