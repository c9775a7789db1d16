"""Fixtures for the control-plane tests (helpers live in tests/control/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.control.helpers import TESTPLUGINS, Agent, config
from tests.control.inprocess import Served, ServedThread
from tests.utils import short_tmpdir


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    """One daemon for a module's read-mostly tests."""
    with short_tmpdir() as base:
        a = Agent(base, config(base), argv=TESTPLUGINS, log_level="info")
        with a:
            a.ready()
            yield a
            assert a.stop() == 0
        assert "Traceback" not in a.log()


@pytest.fixture
def served() -> Iterator[Served]:
    """A real ControlServer on a real socket in this process (tests/control/inprocess.py):
    for protocol and handler tests that need no daemon process."""
    with short_tmpdir() as base, ServedThread(base / "run") as s:
        yield s
