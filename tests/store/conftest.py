from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.config import JournalConfig, StoreConfig
from agentd.store import Store

Opener = Callable[..., Any]


def config(**kw: Any) -> StoreConfig:
    """A StoreConfig; ``observations``/``actions`` may be given as dicts of JournalConfig keys."""
    for name in ("observations", "actions"):
        if isinstance(kw.get(name), dict):
            kw[name] = JournalConfig(**kw[name])
    kw.setdefault("synchronous", "normal")
    return StoreConfig(**kw)


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Opener]:
    """``await open_store(**config)``: an open Store on a real file in tmp_path, closed after
    the test (``path=`` picks another file)."""
    opened: list[Store] = []

    async def opener(path: Path | None = None, **kw: Any) -> Store:
        store = Store(path or tmp_path / "agentd.db", config(**kw))
        await store.open()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()
