"""The engine with a real Store (SQLite file) and a real mosquitto: steady state, outages,
refusals, retention gaps, graceful stop. The fleet side is docs/examples/fleet_consumer.py."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import msgspec
import pytest

from tests.uplink.broker import Certs, Mosquitto
from tests.uplink.helpers import (
    NODE,
    PREFIX,
    Ticker,
    acked,
    collector,
    completeness,
    engine,
    open_store,
    until,
)

pytestmark = pytest.mark.slow


async def test_steady_state_every_id_once_in_order(tmp_path: Path, broker: Mosquitto) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url)
    try:
        with collector(broker.port) as sub:
            await e.start()
            t = Ticker(store)
            for _ in range(30):
                await t.write(10, engine=e)
                await asyncio.sleep(0.02)
            store.journal_event("test.mark", {"n": 1})
            await store.flush()
            e.notify()
            assert await until(lambda: acked(e) == 300 and acked(e, "events") >= 1)
            assert await until(lambda: sum(1 for m in sub.decoded("observations")) >= 1)
            await e.stop(5.0)
            await asyncio.sleep(0.3)
            msgs = sub.snapshot()
        ids = [
            row[0]
            for m in (msgspec.msgpack.decode(p) for t, p, _ in msgs if t.endswith("/observations"))
            for row in m["rows"]
        ]
        assert ids == list(range(1, 301))  # once each, in order
        book = completeness(msgs)
        assert book.ledger(NODE, "observations").missing(300) == []
        assert book.ledger(NODE, "events").received
        st = e.state()
        obs = next(s for s in st.streams if s.stream == "observations")
        assert obs.delivered == 300
        assert obs.duplicates == 0
        assert obs.gap_rows == 0
        # birth, then the graceful offline (published first on stop)
        statuses = [msgspec.msgpack.decode(p) for t, p, _ in msgs if t.endswith("/status")]
        assert [s["state"] for s in statuses] == ["online", "offline"]
        assert statuses[-1]["clean"] is True
        assert statuses[0]["epoch"] == store.epoch
        assert statuses[0]["boot_id"] == store.boot_id
    finally:
        await e.stop(0)
        await store.close()


async def test_cursor_is_durable_and_resumes(tmp_path: Path, broker: Mosquitto) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url)
    await e.start()
    await Ticker(store).write(50, engine=e)
    assert await until(lambda: acked(e) == 50)
    await e.stop(2.0)
    await store.close()
    store = await open_store(tmp_path / "a.db")
    try:
        assert (await store.load_cursors("fleet"))["observations"] == 50
        e2 = engine(store, broker.url)
        with collector(broker.port, "c2") as sub:
            await e2.start()
            t = Ticker(store)
            t.tick = 50
            await t.write(10, engine=e2)
            assert await until(lambda: acked(e2) == 60)
            await e2.stop(2.0)
            await asyncio.sleep(0.2)
            firsts = [m["first"] for m in sub.decoded("observations")]
        assert firsts
        assert min(firsts) == 51
    finally:
        await store.close()


async def test_broker_sigterm_restart_nothing_missing_duplicates_bounded(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db")
    window, rows = 4, 20
    e = engine(store, broker.url, window=window, batch_rows=rows)
    t = Ticker(store)
    try:
        with collector(broker.port) as sub:
            await e.start()
            for _ in range(20):
                await t.write(7, engine=e)
                await asyncio.sleep(0.02)
            # a backlog being drained when the broker goes: batches are in flight
            await t.write(2000, engine=e)
            assert await until(lambda: e.state().streams[-1].in_flight > 0, 10, every=0.001)
            broker.stop(signal.SIGTERM)
            for _ in range(20):  # 10 s with the broker gone, writing on
                await t.write(5, engine=e)
                await asyncio.sleep(0.5)
            broker.start()
            for _ in range(10):
                await t.write(5, engine=e)
                await asyncio.sleep(0.05)
            total = t.tick
            assert await until(lambda: acked(e) == total, 60)
            book = completeness(sub.snapshot())
            assert await until(
                lambda: (
                    not completeness(sub.snapshot()).ledger(NODE, "observations").missing(total)
                ),
                30,
            )
            book = completeness(sub.snapshot())

            # the outage is in the events journal too, and reached the fleet after it
            def kinds() -> set[str]:
                rows = completeness(sub.snapshot()).ledger(NODE, "events").rows.values()
                return {r["kind"] for r in rows}

            assert await until(lambda: {"uplink.lost", "uplink.connected"} <= kinds(), 20)
        led = book.ledger(NODE, "observations")
        assert led.missing(total) == []
        obs = next(s for s in e.state().streams if s.stream == "observations")
        assert e.state().reconnects >= 1
        # what the collector saw twice was counted by the engine, and is within the window
        assert led.duplicates <= obs.duplicates <= window * rows
        print(
            f"\nSIGTERM restart: {total} rows, duplicates seen {led.duplicates}, "
            f"counted {obs.duplicates}, bound {window * rows}"
        )
    finally:
        await e.stop(1.0)
        await store.close()


async def _sigkill_scenario(tmp_path: Path, end_to_end: bool) -> tuple[int, list[int], int]:
    """The consumer is away (its session queues on the broker) while agentd publishes and gets
    its PUBACKs; then the broker is SIGKILLed (its persistence is saved only every 30 min)."""
    fc = __import__("tests.uplink.helpers", fromlist=["fleet_consumer"]).fleet_consumer()
    b = Mosquitto(tmp_path / "broker", autosave_interval=1800)
    b.start()
    store = await open_store(tmp_path / "a.db")
    e = engine(store, b.url, end_to_end=end_to_end)
    t = Ticker(store)
    book = fc.Completeness()
    try:
        with collector(b.port) as sub:
            await e.start()
            await t.write(100, engine=e)
            assert await until(lambda: acked(e) == 100)
            assert await until(
                lambda: not completeness(sub.snapshot()).ledger(NODE, "observations").missing(100),
                20,
            )
            if end_to_end:
                for topic, payload, _ in sub.snapshot():
                    book.add(topic, payload)
                fc.publish_acks(sub.client, PREFIX, book)
                assert await until(lambda: e.state().streams[-1].confirmed == 100)
        # the consumer is away; agentd goes on and the broker acknowledges
        await t.write(200, engine=e)
        assert await until(lambda: acked(e) == 300)
        b.stop(signal.SIGKILL)
        b.start()
        with collector(b.port) as sub:
            assert await until(lambda: e.state().connected, 30)
            await asyncio.sleep(2.0)
            msgs = sub.snapshot()
        for topic, payload, _ in msgs:
            book.add(topic, payload)
        seen = completeness(msgs).ledger(NODE, "observations")
        lost = [i for i in range(101, 301) if i not in seen.received]
        return acked(e), lost, b.port
    finally:
        await e.stop(1.0)
        await store.close()
        b.stop()


async def test_broker_sigkill_without_end_to_end_loses_acknowledged_rows(tmp_path: Path) -> None:
    cursor, lost, _ = await _sigkill_scenario(tmp_path, end_to_end=False)
    assert cursor == 300
    # PUBACKed, queued for the absent consumer, never saved: gone with the broker
    assert lost, "expected the broker to lose what it acknowledged but had not saved"
    print(
        f"\nSIGKILL without end_to_end: {len(lost)} of 200 acknowledged rows lost "
        f"(ids {lost[0]}..{lost[-1]})"
    )


async def test_broker_sigkill_with_end_to_end_nothing_missing(tmp_path: Path) -> None:
    cursor, lost, _ = await _sigkill_scenario(tmp_path, end_to_end=True)
    assert cursor == 300
    assert lost == []


async def test_acl_denied_topic_keeps_the_cursor(tmp_path: Path) -> None:
    acl = f"topic write {PREFIX}/{NODE}/status\ntopic write {PREFIX}/{NODE}/events\ntopic read #\n"
    b = Mosquitto(tmp_path / "broker", acl=acl)
    b.start()
    store = await open_store(tmp_path / "a.db")
    e = engine(store, b.url, streams=("observations",))
    try:
        with collector(b.port) as sub:
            await e.start()
            await Ticker(store).write(20, engine=e)
            assert await until(lambda: e.state().health == "degraded", 20)
            st = e.state()
            obs = st.streams[0]
            assert obs.acked == 0
            assert obs.delivered == 0
            assert obs.refused >= 1
            assert obs.last_error is not None
            assert "0x87" in obs.last_error
            assert st.reason is not None
            assert "0x87" in st.reason
            await e.stop(1.0)
            assert sub.decoded("observations") == []
        assert (await store.load_cursors("fleet")).get("observations", 0) == 0
    finally:
        await e.stop(0)
        await store.close()
        b.stop()


async def test_outage_longer_than_retention_gap_equals_drops(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db", max_rows=50, max_age=None)
    e = engine(store, broker.url)
    t = Ticker(store)
    try:
        with collector(broker.port) as sub:
            await e.start()
            assert await until(lambda: e.state().connected)
            # the outage starts before the first row: every row retention drops is unsent
            broker.stop(signal.SIGTERM)
            for _ in range(10):
                await t.write(30, engine=e)
            dropped = store.health().dropped["observations"]
            assert dropped > 0
            broker.start()
            assert await until(lambda: acked(e) == t.tick, 30)
            assert await until(
                lambda: (
                    not completeness(sub.snapshot()).ledger(NODE, "observations").missing(t.tick)
                ),
                20,
            )
            # the gap is also an agentd event, which the uplink forwards like any other row
            await store.flush()
            e.notify()

            def gap_events() -> list[dict[str, object]]:
                rows = completeness(sub.snapshot()).ledger(NODE, "events").rows.values()
                return [r for r in rows if r["kind"] == "uplink.gap"]

            assert await until(lambda: bool(gap_events()), 20)
            book = completeness(sub.snapshot())
        led = book.ledger(NODE, "observations")
        obs = next(s for s in e.state().streams if s.stream == "observations")
        assert led.gap_rows() == obs.gap_rows == dropped
        assert all(reason.startswith("retention") for _, _, reason in led.gaps)
        assert len(led.received) + led.gap_rows() == t.tick
        (event,) = gap_events()
        assert event["data"] == {
            "uplink": "fleet",
            "stream": "observations",
            "from": led.gaps[0][0],
            "to": led.gaps[0][1],
            "reason": led.gaps[0][2],
        }
    finally:
        await e.stop(1.0)
        await store.close()


async def test_wrong_ca_is_refused_and_degraded(tmp_path: Path, certs: Certs) -> None:
    b = Mosquitto(tmp_path / "broker", certs=certs)
    b.start()
    store = await open_store(tmp_path / "a.db")
    tls = {"cert": str(certs.client), "key": str(certs.client_key)}
    bad = engine(store, b.tls_url, name="bad", mqtt={"ca": str(certs.other_ca), **tls})
    good = engine(store, b.tls_url, name="good", mqtt={"ca": str(certs.ca), **tls})
    try:
        await bad.start()
        await good.start()
        await Ticker(store).write(10, engine=good)
        assert await until(lambda: acked(good) == 10)
        assert await until(lambda: bad.state().health == "degraded")
        assert "certificate verify failed" in (bad.state().reason or "")
        assert acked(bad) == 0
    finally:
        await bad.stop(0)
        await good.stop(1.0)
        await store.close()
        b.stop()


async def test_actions_and_events_drain_before_observations(
    tmp_path: Path, broker: Mosquitto
) -> None:
    store = await open_store(tmp_path / "a.db")
    e = engine(store, broker.url, window=1, batch_rows=10)
    try:
        await Ticker(store).write(200)
        for i in range(30):
            store.journal_event("test.event", {"i": i})
        await store.flush()
        with collector(broker.port) as sub:
            await e.start()
            assert await until(lambda: acked(e) == 200, 30)
            await asyncio.sleep(0.2)
            order = [t.rsplit("/", 1)[-1] for t, _, _ in sub.snapshot()]
        order = [o for o in order if o in ("observations", "events")]
        last_event = max(i for i, o in enumerate(order) if o == "events")
        first_obs = order.index("observations")
        assert last_event < first_obs + 2  # at most the one batch that was already out
    finally:
        await e.stop(1.0)
        await store.close()
