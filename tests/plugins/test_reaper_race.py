"""A stray caught by the sweep in the middle of an execve.

``setsid sleep N &`` leaves the run's session before it execs ``sleep``: from then on the sweep
can tell it is the run's only by the ``AGENTD_RUN`` token in /proc/PID/environ, and while the
kernel is loading the new program that file reads as nothing (the new mm's ``env_end`` is 0
until ``create_elf_tables`` fills it in; a file opened on the old mm reads nothing once exec
has dropped it). A sweep that took that for "not ours" let the stray run on, uncounted: the
test_hardening daemonize test failed so about once in five full-suite runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agentd.plugins.builtin import _proc, _reaper
from tests.plugins.test_hardening import _procs_with, _zombie_children


def _quiet(secs: str) -> list[str]:
    return ["/bin/sh", "-c", f"setsid sleep {secs} >/dev/null 2>&1 </dev/null &"]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):  # a stray not (yet) adopted by us
            os.waitpid(pid, 0)


@pytest.mark.parametrize("moment", ["before-elf-tables", "inside-elf-tables"])
async def test_a_stray_read_mid_execve_is_found_killed_and_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, moment: str
) -> None:
    """The window is microseconds wide, so it is forced: the first look at each process finds
    what the kernel shows mid-execve, an empty environ and (``inside-elf-tables``: while
    ``create_elf_tables`` walks the strings) ``env_start == env_end``. The processes, the
    session, the re-parenting and /proc are all real; the program waits until its stray has
    left the session (the FIFO), so the token is the only way to tell the stray is the run's."""
    secs = f"65.{uuid.uuid4().int % 10**6}"
    fifo = tmp_path / "up"
    os.mkfifo(fifo)
    stray = f"echo up > {fifo}; exec sleep {secs}"
    argv = ["/bin/sh", "-c", f"setsid sh -c '{stray}' >/dev/null 2>&1 </dev/null & read x < {fifo}"]
    zombies = _zombie_children()
    read_environ, read_bounds = _reaper._environ, _reaper._env_bounds
    looked: dict[str, set[int]] = {"environ": set(), "bounds": set()}
    forced: list[int] = []

    def mid_exec_environ(pid: int) -> bytes | None:
        if pid not in looked["environ"]:
            looked["environ"].add(pid)
            with contextlib.suppress(OSError):
                if secs.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    forced.append(pid)
            return b""
        return read_environ(pid)

    def mid_exec_bounds(pid: int) -> tuple[int, int] | None:
        real = read_bounds(pid)
        if moment == "inside-elf-tables" and real and pid not in looked["bounds"]:
            looked["bounds"].add(pid)
            return real[0], real[0]
        return real

    monkeypatch.setattr(_reaper, "_environ", mid_exec_environ)
    monkeypatch.setattr(_reaper, "_env_bounds", mid_exec_bounds)
    try:
        res = await _proc.run_argv(argv, timeout=20.0, env=_proc.child_environ())
        left = _procs_with(secs)
    finally:
        _kill(_procs_with(secs))
    assert len(forced) == 1, "the stray's environment was not read as mid-execve"
    assert (res.returncode, res.strays, left) == (0, 1, [])
    assert _zombie_children() - zombies == set()


async def test_a_child_with_an_empty_environment_is_left_alone_without_stalling() -> None:
    """A live child of ours whose environment really is empty (``env -i``) cannot be told to
    be a run's: the sweep leaves it alone after a second look, long before its reap budget."""
    secs, other = (f"{n}.{uuid.uuid4().int % 10**6}" for n in (66, 67))
    bare = subprocess.Popen(["/usr/bin/sleep", other], env={})
    try:
        while _procs_with(other) == []:  # exec'd: its (empty) environment is in place
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        res = await _proc.run_argv(_quiet(secs), timeout=20.0, env=_proc.child_environ())
        took = time.monotonic() - t0
        assert (res.strays, _procs_with(secs)) == (1, [])
        assert bare.poll() is None, "a child that is no run's was killed"
        assert took < _reaper._REAP_BUDGET, "the sweep waited out its budget on it"
    finally:
        bare.kill()
        bare.wait()
        _kill(_procs_with(secs))
