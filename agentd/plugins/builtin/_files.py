"""Opening device files without hanging on them, shared by the `file` sensor and actuator
(and the secret files of `agentd.secrets`).

A sysfs attribute or a status file is a regular file; a FIFO, a socket or a tty in its place (a
replaced node, a hung bus) would block a worker thread in ``open()`` or ``read()`` forever. So
every open adds ``O_NONBLOCK`` (it changes nothing for a regular file) and checks with
``fstat`` that what it got is a regular file; anything else is refused with a one-line
``NotRegularFile``. ``open_nofollow`` walks an already resolved absolute path one component at
a time (``openat`` with ``O_NOFOLLOW``), so a directory swapped for a symlink later is refused
instead of followed."""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["NotRegularFile", "SymlinkRefused", "file_kind", "open_nofollow", "open_regular"]

_BASE = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class NotRegularFile(OSError):
    """A path is a FIFO, a socket, a device or a directory where a regular file is expected."""


class SymlinkRefused(OSError):
    """A component of a path that must not be followed is a symlink."""


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "a regular file"


def _refusal(shown: str, mode: int) -> NotRegularFile:
    return NotRegularFile(f"{shown} is {file_kind(mode)}, not a regular file")


def open_regular(
    path: str, flags: int, mode: int = 0o644, *, dir_fd: int | None = None, shown: str = ""
) -> int:
    """``os.open`` that never blocks on a FIFO or device and returns only a regular file."""
    shown = shown or path
    try:
        fd = os.open(path, flags | _BASE, mode, dir_fd=dir_fd)
    except OSError as exc:
        # a socket (or a FIFO opened for writing with no reader) says ENXIO: say what it is
        if exc.errno == errno.ENXIO:
            try:
                st = os.stat(path, dir_fd=dir_fd, follow_symlinks=not flags & os.O_NOFOLLOW)
            except OSError:
                raise exc from None
            raise _refusal(shown, st.st_mode) from None
        raise
    try:
        st_mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st_mode):
        os.close(fd)
        raise _refusal(shown, st_mode)
    return fd


def open_nofollow(path: str, flags: int, mode: int = 0o644) -> int:
    """Open the absolute, already resolved ``path`` following no symlink on the way (each
    directory with ``O_NOFOLLOW`` relative to the one before); a regular file only."""
    parts = [p for p in path.split("/") if p]
    if not os.path.isabs(path) or not parts or ".." in parts:
        raise ValueError(f"{path!r} is not a resolved absolute path")
    dirfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = ""
        for comp in parts[:-1]:
            walked += "/" + comp
            try:
                nxt = os.open(
                    comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd
                )
            except OSError as exc:
                _explain(exc, comp, dirfd, walked, path)
                raise
            os.close(dirfd)
            dirfd = nxt
        try:
            return open_regular(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=dirfd, shown=path)
        except OSError as exc:
            _explain(exc, parts[-1], dirfd, path, path)
            raise
    finally:
        os.close(dirfd)


def _explain(exc: OSError, name: str, dirfd: int, walked: str, path: str) -> None:
    """Turn ELOOP/ENOTDIR on a symlink into a SymlinkRefused naming it."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or isinstance(exc, NotRegularFile):
        return
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefused(
            f"{path}: {walked} became a symlink since the target was resolved (not followed)"
        ) from None
