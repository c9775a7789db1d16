"""Fixtures shared by the plugin tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.plugins.test_actuators import Server


@contextlib.asynccontextmanager
async def serving(srv: Server) -> AsyncIterator[Server]:
    """``srv`` (a `Server`, or a subclass with its own ``handle``) listening on 127.0.0.1."""
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = srv.server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        srv.server.close()
        await srv.server.wait_closed()


@pytest.fixture
async def http_server() -> AsyncIterator[Server]:
    async with serving(Server()) as srv:
        yield srv
