"""The engine's bounds and options: the broker's Receive Maximum caps the window, the catch-up
rate, a graceful stop (offline first, then drain within the budget), the JSON format, and the
docs' consumer run as a program."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from tests.uplink.broker import Mosquitto
from tests.uplink.helpers import (
    NODE,
    ROOT,
    Ticker,
    acked,
    collector,
    completeness,
    engine,
    open_store,
    until,
)


async def test_window_never_above_the_brokers_receive_maximum(tmp_path: Path) -> None:
    b = Mosquitto(tmp_path / "broker", extra="max_inflight_messages 3\n")
    b.start()
    store = await open_store(tmp_path / "a.db")
    e = engine(store, b.url, window=16, batch_rows=5)
    try:
        await Ticker(store).write(400)
        await e.start()
        peak = 0
        while acked(e) < 400:
            peak = max(peak, e.state().streams[-1].in_flight)
            await asyncio.sleep(0)
        assert e.state().window == 2  # Receive Maximum 3, one slot kept for status messages
        assert 1 <= peak <= 2
    finally:
        await e.stop(1.0)
        await store.close()
        b.stop()


async def test_catch_up_rate_bounds_the_drain(tmp_path: Path, broker: Mosquitto) -> None:
    store = await open_store(tmp_path / "a.db")
    rate = 64 * 1024
    e = engine(store, broker.url, catch_up_rate=rate, batch_bytes=16 * 1024)
    try:
        await Ticker(store).write(2000)  # ~0.3 MB of envelopes
        await e.start()
        assert await until(lambda: e.state().connected)
        started = time.monotonic()
        assert await until(lambda: acked(e) == 2000, 60)
        elapsed = time.monotonic() - started
        size = sum(len(r.data) for r in await store.stream_rows("observations", 0, 2000, 1 << 30))
        # one burst (a batch) may go at once; the rest at most at the rate
        assert elapsed >= (size - 64 * 1024) / rate * 0.9
    finally:
        await e.stop(1.0)
        await store.close()


async def test_graceful_stop_publishes_offline_first_then_drains(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url, window=1, batch_rows=50)
    try:
        with collector(broker.port) as sub:
            await e.start()
            assert await until(lambda: e.state().connected)
            await Ticker(store).write(3000, engine=e)
            final = await e.stop(20.0)
            assert final.phase == "stopped"
            assert acked(e) == 3000
            assert (await store.load_cursors("fleet"))["observations"] == 3000
            await asyncio.sleep(0.3)
            kinds = [t.rsplit("/", 1)[-1] for t, _, _ in sub.snapshot()]
        # online first; offline was published at the start of the stop, batches followed it
        assert kinds[0] == "status"
        offline = kinds.index("status", 1)
        assert "observations" in kinds[offline:]
        book = completeness(sub.snapshot())
        assert book.ledger(NODE, "observations").missing(3000) == []
    finally:
        await store.close()


async def test_stop_budget_is_kept_and_the_rest_waits_for_the_next_start(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url, window=1, batch_rows=1, catch_up_rate=1024, batch_bytes=1024)
    try:
        await e.start()
        assert await until(lambda: e.state().connected)
        await Ticker(store).write(500, engine=e)
        started = time.monotonic()
        final = await e.stop(0.5)
        assert time.monotonic() - started < 3.0
        obs = next(s for s in final.streams if s.stream == "observations")
        assert obs.acked < 500  # the budget ran out, nothing was skipped: the cursor says so
        assert (await store.load_cursors("fleet"))["observations"] == obs.acked
    finally:
        await store.close()


async def test_json_format(tmp_path: Path, broker: Mosquitto) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url, format="json")
    try:
        with collector(broker.port) as sub:
            await e.start()
            await Ticker(store).write(20, engine=e)
            assert await until(lambda: acked(e) == 20)
            await asyncio.sleep(0.2)
            payloads = [p for t, p, _ in sub.snapshot() if t.endswith("/observations")]
        docs = [msgspec.json.decode(p) for p in payloads]
        rows = [r for d in docs for r in d["rows"]]
        assert [r[0] for r in rows] == list(range(1, 21))
        assert rows[0][4]["tick"] == 1  # the stored row, decoded into JSON
        assert rows[0][4]["readings"]["cpu"]["pad"] == "x" * 64
    finally:
        await e.stop(1.0)
        await store.close()


async def test_fleet_consumer_program_checks_completeness(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db", max_rows=100, max_age=None)
    e = engine(store, broker.url)
    consumer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "docs/examples/fleet_consumer.py"),
            "--url",
            broker.url,
            "--node",
            NODE,
            "--expect",
            "observations=400",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        await asyncio.sleep(1.0)  # subscribed
        await Ticker(store).write(400)  # retention keeps 100: 300 become gap rows
        await e.start()
        rc = await asyncio.to_thread(consumer.wait, 60)
        out = consumer.stdout.read().decode() if consumer.stdout else ""
        assert rc == 0, out
        report = msgspec.json.decode(out)
        (obs,) = [v for k, v in report.items() if k.endswith("/observations")]
        assert obs["received"] + obs["gap_rows"] == 400
        assert obs["gap_rows"] == 300
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        if consumer.stdout:
            consumer.stdout.close()
        await e.stop(1.0)
        await store.close()


async def test_stop_returns_early_when_the_link_dies_during_the_drain(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url, catch_up_rate=1024, batch_bytes=1024, batch_rows=4)
    try:
        await e.start()
        assert await until(lambda: e.state().connected)
        await Ticker(store).write(300, engine=e)  # minutes at 1 KB/s
        stopping = asyncio.ensure_future(e.stop(30.0))
        await asyncio.sleep(0.5)
        broker.stop(signal.SIGKILL)
        started = time.monotonic()
        final = await asyncio.wait_for(stopping, 15)
        assert time.monotonic() - started < 10  # not the whole 30 s budget
        assert final.phase == "stopped"
        assert 0 < final.streams[-1].acked < 300
    finally:
        await store.close()


async def test_engine_wakes_on_commits_without_notify(tmp_path: Path, broker: Mosquitto) -> None:
    store = await open_store(tmp_path / "a.db")
    # a batch is full at one row, and without a wake-up it would sleep for 30 s
    e = engine(store, broker.url, batch_rows=1, batch_interval=30.0)
    try:
        await e.start()
        assert await until(lambda: e.state().connected)
        await asyncio.sleep(0.2)
        await Ticker(store).write(3)  # no notify()
        assert await until(lambda: acked(e) == 3, 5)
    finally:
        await e.stop(1.0)
        await store.close()


async def test_a_broker_that_stops_answering_is_left_after_ack_timeout(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url, ack_timeout=1.0, mqtt={"connect_timeout": 2.0})
    assert broker.proc is not None
    try:
        await e.start()
        assert await until(lambda: e.state().connected)
        t = Ticker(store)
        await t.write(10, engine=e)
        assert await until(lambda: acked(e) == 10)
        broker.proc.send_signal(signal.SIGSTOP)  # the TCP link stays up; nothing answers
        await t.write(10, engine=e)
        assert await until(lambda: "no PUBACK" in (e.state().last_error or ""), 10)
        assert e.state().reconnects >= 1
        broker.proc.send_signal(signal.SIGCONT)
        assert await until(lambda: acked(e) == 20, 30)
    finally:
        if broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        await e.stop(1.0)
        await store.close()
