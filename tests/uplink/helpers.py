"""Shared pieces of the engine tests: a real Store on a temp file, journaling rows, an engine
on a real mosquitto, and the docs' fleet consumer as the completeness check."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from agentd.config import JournalConfig, StoreConfig
from agentd.model import Observation
from agentd.store import Store
from agentd.uplink.config import MqttConfig, UplinkSettings
from agentd.uplink.engine import UplinkEngine
from agentd.uplink.mqtt import MqttTransport
from tests.uplink.broker import Collector

ROOT = Path(__file__).resolve().parents[2]
NODE = "gw-test"
PREFIX = "agentd/v1"


def fleet_consumer() -> ModuleType:
    """docs/examples/fleet_consumer.py, imported as a module (the test uses the docs' code)."""
    name = "fleet_consumer"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs/examples/fleet_consumer.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def open_store(path: Path, **journal: Any) -> Store:
    cfg = StoreConfig(
        synchronous="normal",
        flush_interval=0.05,
        observations=JournalConfig(**journal) if journal else JournalConfig(),
    )
    store = Store(path, cfg)
    await store.open()
    return store


class Ticker:
    """Journals observations with increasing ticks, like the loop would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tick = 0

    async def write(self, n: int, *, engine: UplinkEngine | None = None) -> None:
        for _ in range(n):
            self.tick += 1
            self.store.journal_observation(
                Observation(
                    tick=self.tick,
                    monotonic=time.monotonic(),
                    wall=time.time(),
                    readings={"cpu": {"load": float(self.tick % 7), "pad": "x" * 64}},
                )
            )
        await self.store.flush()
        if engine is not None:
            engine.notify()


def engine(
    store: Store, url: str, *, name: str = "fleet", mqtt: dict[str, Any] | None = None, **kw: Any
) -> UplinkEngine:
    kw.setdefault("node", NODE)
    kw.setdefault("batch_interval", 0.1)
    kw.setdefault("reconnect_min", 0.05)
    kw.setdefault("reconnect_max", 0.5)
    kw.setdefault("backlog_max_age", 300.0)
    settings = UplinkSettings(**kw)
    transport = MqttTransport(MqttConfig(url=url, **(mqtt or {})))
    return UplinkEngine(name, settings, transport, store)


def collector(port: int, client_id: str = "collector") -> Collector:
    return Collector(port, f"{PREFIX}/{NODE}/+", client_id=client_id)


def completeness(messages: list[tuple[str, bytes, bool]]) -> Any:
    book = fleet_consumer().Completeness()
    for topic, payload, _retained in messages:
        if not topic.endswith("/ack"):
            book.add(topic, payload)
    return book


async def until(predicate: Any, timeout: float = 30.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(every)
    return bool(predicate())


def acked(e: UplinkEngine, stream: str = "observations") -> int:
    return next(s.acked for s in e.state().streams if s.stream == stream)
