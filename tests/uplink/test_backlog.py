"""The backlog figures (`agentctl uplink`, health, metrics) from a real store: right for a
stream behind its cursor, and no read of the store's thread for a stream that is not."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agentd.uplink.cursors import count_backlog
from agentd.uplink.parts import StreamCursor
from tests.uplink.helpers import Ticker, open_store


async def test_backlog_counts_and_skips_streams_with_nothing_above_the_cursor(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path / "a.db")
    try:
        await Ticker(store).write(5)
        await store.flush()
        reads: list[tuple[str, str]] = []
        for method in ("stream_backlog", "stream_rows"):
            real = getattr(store, method)

            async def counted(stream: Any, *args: Any, _real: Any = real, _m: str = method) -> Any:
                reads.append((_m, stream))
                return await _real(stream, *args)

            setattr(store, method, counted)
        streams = [StreamCursor("observations", acked=2), StreamCursor("actions")]
        streams.append(StreamCursor("events"))
        await count_backlog(store, streams, time.monotonic())
        obs = streams[0]
        assert (obs.backlog_rows, obs.backlog_bytes > 0) == (3, True)
        assert obs.backlog_since is not None
        assert [(s.backlog_rows, s.backlog_bytes) for s in streams[1:]] == [(0, 0), (0, 0)]
        # only the stream with rows above its cursor was read
        assert {s for _, s in reads} == {"observations"}
        reads.clear()
        obs.acked = store.stream_head("observations")
        await count_backlog(store, streams, time.monotonic())
        assert reads == []
        assert (obs.backlog_rows, obs.backlog_bytes, obs.backlog_since) == (0, 0, None)
    finally:
        await store.close()
