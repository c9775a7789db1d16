"""`DatabaseThread`: one thread the store owns, holding one stdlib ``sqlite3`` connection; every
call runs there, in submission order, and its result comes back to the event loop.

This is what aiosqlite does, minus its per-statement API: the store runs a whole transaction (a
group-commit batch, a migration, a query with its decoding) as one call, one hop. Owning the
thread replaces the private ``aiosqlite.Connection._execute``/``_conn`` the store used to reach
for (issue 12): nothing here can change under us with a dependency's minor release.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = ["DatabaseThread"]

T = TypeVar("T")

#: how long close() waits for the thread to end after its last call
JOIN_TIMEOUT: Final = 5.0

_Call = tuple[
    Callable[..., Any],
    tuple[Any, ...],
    dict[str, Any],
    asyncio.Future[Any],
    asyncio.AbstractEventLoop,
]


class DatabaseThread:
    """``await connect(factory)`` first; then ``await call(fn, *args)`` runs
    ``fn(connection, *args)`` on the thread; ``await close()`` closes the connection and ends
    the thread."""

    def __init__(self, name: str = "agentd-store") -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._closed = False

    async def connect(self, factory: Callable[[], sqlite3.Connection]) -> None:
        """Start the thread and open the connection on it (sqlite3 connections belong to the
        thread that made them)."""
        if self._started:
            raise RuntimeError("the database thread is already connected")
        self._started = True
        self._thread.start()
        await self._submit(self._open, factory)

    def _open(self, _: None, factory: Callable[[], sqlite3.Connection]) -> None:
        self._conn = factory()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(connection, *args, **kwargs)`` on the thread."""
        if self._conn is None or self._closed:
            raise sqlite3.ProgrammingError("the database connection is closed")
        return await self._submit(fn, *args, **kwargs)

    async def close(self) -> None:
        """Close the connection (a WAL checkpoint happens here) and end the thread; idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        drained = False
        try:
            if self._conn is not None:
                await self._submit(_close)
            drained = True
        finally:
            self._conn = None
            self._calls.put(None)
            # after the close call returned the thread is only leaving its loop: this waits
            # microseconds (and uses no executor: that is the sensors'); interrupted, it does
            # not wait at all (the thread is a daemon and ends after its current call)
            self._thread.join(JOIN_TIMEOUT if drained else 0)

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, args, kwargs, fut, loop))
        return fut

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, kwargs, fut, loop = item
            try:
                result = fn(self._conn, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                _deliver(loop, fut, None, exc)
            else:
                _deliver(loop, fut, result, None)


def _close(conn: sqlite3.Connection) -> None:
    conn.close()


def _deliver(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if fut.done():  # the awaiting task was cancelled: nobody wants the result
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    # the loop may be gone (a test's asyncio.run ended with a call in flight): nobody waits
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
