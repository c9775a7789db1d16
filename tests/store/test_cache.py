"""The store's connection keeps a bounded page cache (`agentd.store.opening.CACHE_KIB`, issue
#18): SQLite's default would grow to 2 MiB once the database is a few MB, and keep it."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest

from agentd.model import Observation
from agentd.store.opening import CACHE_KIB
from tests.store.conftest import Opener


def _libsqlite3() -> ctypes.CDLL:
    """The SQLite library the sqlite3 module runs on (so its memory counters are ours)."""
    import sqlite3  # noqa: F401 - loads it

    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "libsqlite3" in path:
            lib = ctypes.CDLL(path)
            lib.sqlite3_memory_used.restype = ctypes.c_int64
            return lib
    pytest.skip("sqlite3 is not linked to a shared libsqlite3 here: no memory counter to read")


async def test_the_page_cache_is_bounded(open_store: Opener) -> None:
    lib = _libsqlite3()
    store = await open_store(observations={"max_rows": None, "max_age": None})
    assert await store.read(lambda c: c.execute("PRAGMA cache_size").fetchone()[0]) == -CACHE_KIB
    before = lib.sqlite3_memory_used()
    pad = "x" * 400
    for tick in range(1, 20_001):  # about 10 MB of journal
        store.journal_observation(
            Observation(tick=tick, monotonic=0.0, wall=time.time(), readings={"s": {"p": pad}})
        )
        if tick % 2000 == 0:
            await store.flush()
    after = 0
    while after < 20_000:  # read it all back, as an uplink does
        rows = await store.stream_rows("observations", after, 1000, 1 << 22)
        after = rows[-1].id
    grown = lib.sqlite3_memory_used() - before
    # the cache, plus some statements and the schema; the default cache alone would be 2000
    assert grown < (CACHE_KIB + 400) * 1024, grown
