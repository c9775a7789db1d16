"""State changes are damped (issue 13): a sensor at a 10 ms interval that times out now and
then (its timeout equals the interval) says so once, not as a failing/recovered pair each
time; ``failing_after`` / ``recovered_after`` set how many failures / successes in a row it
takes."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from tests.test_loop import make_loop, run_for
from tests.utils import AGENTD, handle


class Jittery:
    """Answers at once, but every ``every``-th call outlives the 10 ms timeout (a system
    sensor on a busy gateway)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.calls = 0

    async def perceive(self) -> dict[str, float]:
        self.calls += 1
        if self.calls % self.every == 0:
            await asyncio.sleep(0.05)
        return {"x": 1.0}


def _changes(caplog: pytest.LogCaptureFixture, name: str) -> tuple[int, int]:
    lines = [r.getMessage() for r in caplog.records if r.name == "agentd.plugins"]
    failing = sum(f"sensor {name!r} is failing" in m for m in lines)
    recovered = sum(f"sensor {name!r} recovered" in m for m in lines)
    return failing, recovered


async def test_a_sensor_that_times_out_now_and_then_does_not_flap_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentd")
    sensor = Jittery(every=8)
    # degraded_after high: the backoff would hide the flapping this test is about
    h = handle("sensor", "system", sensor, timeout=0.01, degraded_after=1000)
    loop = make_loop(0.01, {"system": h})
    await run_for(loop, 300)
    failures = h.errors
    assert failures >= 20, failures  # it did time out again and again...
    failing, recovered = _changes(caplog, "system")
    # ...but the log says so a few times while it learns that it flaps, not once per timeout
    assert failing <= 6, (failing, recovered, failures)
    assert recovered <= failing
    assert h.state == "failing"
    assert h.recover_need >= 8  # more than the 7 successes between two timeouts


def test_failing_after_and_recovered_after() -> None:
    h = handle("sensor", "s", object(), failing_after=3, recovered_after=2, degraded_after=10)
    h.fail("e1")
    h.fail("e2")
    assert h.state == "ok"  # two failures in a row: not failing yet
    assert h.last_error == "e2"
    h.ok()
    h.fail("e3")
    h.fail("e4")
    assert h.state == "ok"  # the success in between started the count again
    h.fail("e5")
    assert h.state == "failing"
    h.ok()
    assert h.state == "failing"  # one success is not enough
    h.ok()
    assert h.state == "ok"


def test_the_defaults_report_the_first_failure_and_recovery_at_once() -> None:
    h = handle("sensor", "s", object())
    h.fail("e")
    assert h.state == "failing"
    h.ok()
    assert h.state == "ok"


def test_damping_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "agentd.toml"
    path.write_text("[sensors.system]\nfailing_after = 0\n")
    out = subprocess.run(
        [*AGENTD, "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert "sensors.system.failing_after: expected an integer >= 1, got 0" in lines, lines
