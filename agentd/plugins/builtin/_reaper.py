"""Finding, killing and reaping what a command run left behind, for ``_proc.run_argv``.

agentd makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``): an orphan among its
descendants (``setsid sleep 60 &`` once the shell exits, a double fork) is re-parented to agentd
instead of init, so it can be found and reaped. A run's processes are told apart by its leader
(``start_new_session``: their process group or session is the leader's pid) and by the
``AGENTD_RUN`` token every process of the run inherits in its environment; with their
descendants they are the run's *strays*.

A stray that has left the session is the run's only by that token, and its environment reads
as nothing while it is inside an execve (``setsid`` exec'ing ``sleep``): such a child is looked
at again, within the reap budget, until its environment can be read (``_ours``); taking it for
"not ours" let it run on, uncounted.

A stray that left the session and exited before the sweep could read its environment is a
zombie nobody can attribute: a zombie child that leads its own session, started after the run
did, and is no live run's leader is reaped as such (only while no run is being spawned, so a
leader not yet registered is never taken for one). Everything here that reads /proc runs in a
worker thread; the bookkeeping of live leaders lives on the event loop's thread."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import time
from typing import NamedTuple

__all__ = [
    "RUNS",
    "RUN_MARKER",
    "Runs",
    "Sweep",
    "become_subreaper",
    "boot_ticks",
    "reap_orphans",
    "sweep",
]

#: the environment variable that tells a run's processes apart from everything else
RUN_MARKER = "AGENTD_RUN"
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
#: seconds to wait for killed strays to be reaped (SIGKILL takes effect at once, unless a
#: process is stuck in the kernel)
_REAP_BUDGET = 2.0


class Runs:
    """The runs in flight, kept on the event loop's thread: their leaders' pids (asyncio's to
    reap, never ours) and how many are being spawned right now."""

    def __init__(self) -> None:
        self.leaders: set[int] = set()
        self.spawning = 0


RUNS = Runs()


class Sweep(NamedTuple):
    #: live processes killed
    killed: int
    #: zombie children that may be a run's (see the module docstring), for ``reap_orphans``
    orphans: list[int]


class _Proc(NamedTuple):
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # clock ticks after boot


@functools.cache
def become_subreaper() -> bool:
    """Make agentd the reaper of its orphaned descendants (once; False if the kernel says
    no, e.g. not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def boot_ticks() -> int:
    """Now, in the clock ticks after boot that /proc/PID/stat's start time counts (0 if
    unknown, which makes every zombie child "started after")."""
    try:
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0, int(uptime * os.sysconf("SC_CLK_TCK")) - 1)
    except (OSError, ValueError):
        return 0


def _procs() -> dict[int, _Proc]:
    """Every process we can see."""
    out: dict[int, _Proc] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out  # no procfs (a strange container): the process group kill still applies
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        f_ = stat.rsplit(b")", 1)[-1].split()  # the command name may hold spaces and ')'
        out[int(name)] = _Proc(int(f_[1]), int(f_[2]), int(f_[3]), f_[0].decode(), int(f_[19]))
    return out


def _environ(pid: int) -> bytes | None:
    """What /proc/PID/environ reads (None if it cannot be opened: gone, or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _env_bounds(pid: int) -> tuple[int, int] | None:
    """Where PID's environment starts and ends in its memory (/proc/PID/stat fields 50 and
    51; both 0 while execve has not yet set them up, or with no mm); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
        return int(fields[47]), int(fields[48])
    except (OSError, IndexError, ValueError):
        return None


def _ours(pid: int, marker: bytes, start: int, empty: dict[int, tuple[int, int]]) -> bool | None:
    """Whether the live child ``pid`` (started at ``start`` ticks) carries ``marker`` in its
    environment; None while that cannot be told yet. /proc/PID/environ reads as nothing while
    the process is inside an execve (the new mm's ``env_end`` is 0 until the kernel has laid
    out the new program's stack, and a file opened on the old mm reads nothing once exec has
    dropped it), and ``env_start == env_end`` while ``create_elf_tables`` is half-way through
    the strings: only the same empty span seen twice (kept in ``empty``) is an environment that
    really is empty (``env -i``), which cannot be attributed."""
    env = _environ(pid)
    if env is None:
        return False  # gone, or not ours to read (a set-uid program): cannot be attributed
    if env:
        return marker in b"\0" + env
    bounds = _env_bounds(pid)
    if bounds is None:
        return False  # gone
    if bounds[1] and bounds[0] == bounds[1]:
        if empty.get(pid) == (start, bounds[0]):
            return False
        empty[pid] = (start, bounds[0])
    return None


class _Found(NamedTuple):
    #: the run's processes with their state
    strays: dict[int, str]
    #: live children of ours that may be the run's, to look at again
    unsure: set[int]


def _strays(
    leader: int, token: str, procs: dict[int, _Proc], empty: dict[int, tuple[int, int]]
) -> _Found:
    """The processes of the run led by ``leader`` (itself excluded); ``empty`` is ``_ours``'."""
    me = os.getpid()
    marker = f"\0{RUN_MARKER}={token}\0".encode()
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    todo: list[int] = []
    unsure: set[int] = set()
    for pid, p in procs.items():
        if pid == leader:
            continue
        if leader in (p.pgid, p.sid):
            todo.append(pid)
        elif p.ppid == me and p.state != "Z":
            ours = _ours(pid, marker, p.start, empty)
            if ours:
                todo.append(pid)
            elif ours is None:
                unsure.add(pid)
    found: dict[int, str] = {}
    while todo:
        pid = todo.pop()
        if pid in found or pid in (leader, me):
            continue
        found[pid] = procs[pid].state
        todo.extend(children.get(pid, ()))
    return _Found(found, unsure)


def sweep(leader: int, token: str, since: int, leaders: frozenset[int]) -> Sweep:
    """Kill and reap the strays of the run led by ``leader`` (started at ``since`` ticks);
    ``leaders`` are the runs in flight (never touched). Runs in a worker thread."""
    me = os.getpid()
    killed: set[int] = set()
    pending: set[int] = set()
    alive = 0
    empty: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + _REAP_BUDGET
    while True:
        procs = _procs()
        fresh = False
        found = _strays(leader, token, procs, empty)
        for pid, state in found.strays.items():
            if pid in leaders:
                continue
            if pid not in killed:
                fresh = True
                killed.add(pid)
                pending.add(pid)
                alive += state != "Z"
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours (yet): its parent is a stray, or init
                if not os.path.exists(f"/proc/{pid}"):
                    pending.discard(pid)
                continue
            if done:
                pending.discard(pid)
        # done when every kill is reaped and a scan after them found no one new (a stray may
        # have forked just before its SIGKILL) and no child whose environment could not be
        # read yet (mid-execve: ``setsid sleep 60 &`` has left the session by then)
        unsure = found.unsure - leaders
        if (not pending and not fresh and not unsure) or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    orphans = [
        pid
        for pid, p in procs.items()
        if p.state == "Z"
        and p.ppid == me
        and pid == p.sid
        and p.start >= since
        and pid not in leaders
        and pid not in killed
    ]
    return Sweep(alive, orphans)


def reap_orphans(candidates: list[int]) -> int:
    """Reap the zombie children ``sweep`` could not attribute; on the event loop's thread, so
    ``RUNS`` is current. Skipped while a run is being spawned (its leader is not registered
    yet and may already have exited). The number reaped."""
    if RUNS.spawning:
        return 0
    me = os.getpid()
    reaped = 0
    for pid in candidates:
        if pid in RUNS.leaders:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != b"Z" or int(fields[1]) != me:
            continue
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            reaped += bool(done)
    return reaped
