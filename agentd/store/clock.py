"""The clocks a journal row is stamped with, behind one injectable object.

A Raspberry Pi has no RTC: until NTP syncs, the wall clock may say 1970, and at the first sync
it steps forward by decades. So every row carries, beside its wall time, the kernel's boot id,
the seconds since boot (``CLOCK_BOOTTIME``: monotonic, counts suspend, never stepped) and
whether the wall clock was synchronized when the row was written. Retention by age trusts the
boot-relative time within a boot, and the wall time only between rows both written synchronized
(`agentd.store.retention`).

"Synchronized" is the kernel's own view, read with ``adjtimex(2)`` (modes 0: read only, no
privilege needed): the clock counts as synchronized when the maximum error the time daemon
reports is under 16 s, the rule systemd's ``timedatectl`` uses (``ntp_synced()``), so it agrees
with what an operator sees there and works with timesyncd, chrony and ntpd alike. Where the
call is denied (a unit with ``ProtectClock=yes``: its seccomp filter answers EPERM even to a
read, systemd issue #26413), the flag file timesyncd creates at its first sync of the boot,
``/run/systemd/timesync/synchronized``, answers instead; with neither, rows are "not known to be
synchronized", which retention treats conservatively (it never deletes because of them).
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from pathlib import Path
from typing import Final, Protocol

__all__ = [
    "BOOT_ID_PATH",
    "TIMESYNC_FLAG",
    "Clock",
    "SystemClock",
    "kernel_synced",
    "read_boot_id",
]

BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
TIMESYNC_FLAG: Final = Path("/run/systemd/timesync/synchronized")
#: the kernel's "maximum error" ceiling in microseconds: at or above it nothing disciplines
#: the clock (systemd's ntp_synced() uses the same bound)
MAXERROR_UNSYNCED: Final = 16_000_000
#: how long a synchronized/not answer is reused (an adjtimex call costs ~1.5 us)
SYNC_CACHE: Final = 1.0


class Clock(Protocol):
    """What the store reads the time from; tests inject one to step the wall clock."""

    @property
    def boot_id(self) -> str: ...

    def wall(self) -> float:
        """Unix time (the wall clock: may step)."""
        ...

    def boottime(self) -> float:
        """Seconds since this boot (never steps)."""
        ...

    def synced(self) -> bool:
        """Whether the wall clock is synchronized now."""
        ...


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> on LP64 Linux (x86_64, aarch64): 208 bytes
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


_libc: ctypes.CDLL | None = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)


def kernel_synced() -> bool | None:
    """The kernel's answer, now; None where adjtimex is unavailable or denied."""
    if _libc is None:
        return None
    tx = _Timex()  # modes = 0: read only
    try:
        state = int(_libc.adjtimex(ctypes.byref(tx)))
    except AttributeError:  # a libc without adjtimex
        return None
    if state < 0:  # EPERM from a seccomp filter (ProtectClock=yes)
        return None
    return int(tx.maxerror) < MAXERROR_UNSYNCED


def read_boot_id() -> str:
    """This boot's id (a random UUID the kernel makes at boot); "" if it cannot be read."""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


class SystemClock:
    """The machine's clocks."""

    __slots__ = ("_boot_id", "_checked", "_flag", "_synced")

    def __init__(self, timesync_flag: Path = TIMESYNC_FLAG) -> None:
        self._boot_id = read_boot_id()
        self._flag = timesync_flag
        self._checked = -SYNC_CACHE
        self._synced = False

    @property
    def boot_id(self) -> str:
        return self._boot_id

    def wall(self) -> float:
        return time.time()

    def boottime(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def synced(self) -> bool:
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        if now - self._checked >= SYNC_CACHE:
            kernel = kernel_synced()
            self._synced = kernel if kernel is not None else self._flag.exists()
            self._checked = now
        return self._synced
