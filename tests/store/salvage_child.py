"""``python -m tests.store.salvage_child DB``: open a Store on DB (which the parent has damaged),
print ``opened`` once open() returned, then wait to be killed."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from agentd.config import StoreConfig
from agentd.store import Store


async def main(path: Path) -> None:
    store = Store(path, StoreConfig(synchronous="normal"))
    await store.open()
    os.write(1, b"opened\n")
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
