"""A really full disk (a small tmpfs) and a really read-only one (needs root with CAP_SYS_ADMIN;
skipped, saying so, where mounting is not allowed). A tmpfs cannot be remounted read-only while
the database is open for writing (the kernel says busy), so a disk going read-only under a
running store is covered by test_recovery.py (``PRAGMA query_only``), which also covers a full
disk everywhere (``PRAGMA max_page_count``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.errors import StoreError
from agentd.model import Observation
from tests.store.conftest import Opener
from tests.utils import AgentProcess

pytestmark = pytest.mark.root


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount(8) here")
    done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        _mount("-o", "remount,rw", str(path))
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    done = _mount("-o", f"remount,{mode}", str(path))
    assert done.returncode == 0, done.stderr


def obs(tick: int, pad: int = 2000) -> Observation:
    return Observation(
        tick=tick, monotonic=0.0, wall=time.time(), readings={"s": {"pad": "x" * pad}}
    )


async def test_full_disk_degrades_then_recovers(open_store: Opener, short_tmp: Path) -> None:
    with tmpfs(short_tmp / "disk", "512k") as disk:
        store = await open_store(path=disk / "agentd.db", queue_size=2000, flush_interval=0.05)
        await store.sessions.put("before", 1)
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        tick = 0
        failure = None
        for _ in range(100):  # until the free pages inside the file run out too
            for _ in range(20):
                tick += 1
                store.journal_observation(obs(tick))  # never raises, never blocks
            try:
                await store.flush()
            except StoreError as exc:
                failure = str(exc)
                break
        assert failure == f"cannot write {disk}/agentd.db: database or disk is full"
        h = store.health()
        assert h.state == "degraded"
        assert h.last_error == f"cannot write {disk}/agentd.db: database or disk is full"
        assert h.queue_depth <= 2000
        got = await store.sessions.get("before")  # reads still work
        assert got is not None
        filler.unlink()
        await store.flush()  # the queued rows commit on the retry
        assert store.health().state == "ok"
        kept = await store.query_observations(limit=10_000)
        assert [o.tick for o in kept] == list(range(1, tick + 1))
        await store.close()  # before the unmount: its file is not held open past it


async def test_read_only_disk_at_open_degrades(open_store: Opener, short_tmp: Path) -> None:
    with tmpfs(short_tmp / "disk", "1m") as disk:
        remount(disk, "ro")
        store = await open_store(path=disk / "agentd.db")
        h = store.health()
        assert h.state == "degraded"
        assert h.last_error is not None
        assert h.last_error.startswith(f"cannot open {disk}/agentd.db: ")
        store.journal_observation(obs(1))  # no exception: counted instead
        assert store.health().queue_depth == 1
        # closed while the disk is still mounted: a close after the unmount would retry the
        # queued write on the path, now the bare mount point, and leave agentd.db in /tmp
        await store.close()


def test_daemon_keeps_ticking_while_its_disk_is_full(short_tmp: Path) -> None:
    config = """
[agent]
interval = 0.1
[log]
heartbeat = 0
[store]
flush_interval = 0.1
[sensors.system]
[policies.cpu]
plugin = "threshold"
metric = "system.cpu.percent"
above = -1.0
for_ticks = 100000
[actuators.log]
"""
    with tmpfs(short_tmp / "state", "2m") as state, AgentProcess(short_tmp, config) as agent:
        agent.wait_log(r"tick 3:")
        filler = state / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        agent.wait_log(r"journaling is degraded, the loop keeps running", timeout=60)
        ticks = len(re.findall(r"agentd\.loop: tick \d+:", agent.log()))
        agent.wait_log(r"agentd\.loop: tick \d+:", count=ticks + 10)
        filler.unlink()
        agent.wait_log(r"journaling resumed")
        assert agent.stop() == 0
        log = agent.log()
        conn = sqlite3.connect(state / "agentd.db")
        journaled = conn.execute("SELECT count(*) FROM observations").fetchone()[0]
        conn.close()
    total = len(re.findall(r"agentd\.loop: tick \d+:", log))
    assert journaled == total  # nothing was lost while the disk was full
    assert "Traceback" not in log
    # one line from the store (the loop may log its own on this loaded machine: not ours)
    errors = [line for line in log.splitlines() if " ERROR " in line and "agentd.store" in line]
    assert len(errors) == 1, errors
    assert re.search(
        r"store: cannot write \S+: database or disk is full; journaling is degraded", errors[0]
    )
