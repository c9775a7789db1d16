"""`PluginSupervisor` in process: start_all with ``startup_error = "skip"``, the reads the
control plane uses, a rebuild that keeps what did not change, and stop_all under one budget
naming what is still stopping."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import msgspec
import pytest

from agentd.config import loads
from agentd.errors import PluginError
from agentd.model import Action
from agentd.plugins.base import PluginSpec
from agentd.plugins.registry import Registry
from agentd.plugins.supervisor import PluginSupervisor
from agentd.secrets import SECRET


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    n: int = 0


class Fine:
    def __init__(self, config: Empty) -> None:
        self.stopped = False

    async def perceive(self) -> dict[str, float]:
        return {"x": 1.0}

    async def stop(self) -> None:
        self.stopped = True


class Broken:
    def __init__(self, config: Empty) -> None:
        pass

    async def start(self) -> None:
        raise OSError("no such device")

    async def perceive(self) -> dict[str, float]:
        return {}


class Hang:
    def __init__(self, config: Empty) -> None:
        pass

    async def act(self, action: Action) -> None:
        return None

    async def stop(self) -> None:
        await asyncio.sleep(3600)


class Memo:
    def __init__(self, config: Empty) -> None:
        pass

    def decide(self, observation: object, state: object) -> list[Action]:
        return []


def registry() -> Registry:
    r = Registry()
    r.register(PluginSpec("fine", "sensor", Fine, Empty))
    r.register(PluginSpec("broken", "sensor", Broken, Empty))
    r.register(PluginSpec("hang", "actuator", Hang, Empty, actions={"*": Empty}))
    r.register(PluginSpec("memo", "policy", Memo, Empty))
    return r


CONFIG = """
[sensors.a]
plugin = "fine"
[sensors.b]
plugin = "broken"
startup_error = "skip"
[policies.p]
plugin = "memo"
n = {n}
[actuators.h]
plugin = "hang"
"""


async def test_start_all_reads_and_summary() -> None:
    reg = registry()
    sup = PluginSupervisor(reg)
    await sup.start_all(loads(CONFIG.format(n=1), reg))
    assert [(h.kind, h.name) for h in sup.all()] == [
        ("sensor", "a"),
        ("policy", "p"),
        ("actuator", "h"),
    ]
    assert sup.get("sensor", "a") is sup.by_kind("sensor")["a"]
    assert sup.get("sensor", "b") is None  # did not start
    assert set(sup.sensors()) == {"a"}
    assert set(sup.actuators()) == {"h"}
    states = {(s.kind, s.name): s.state for s in sup.statuses()}
    assert states == {
        ("sensor", "a"): "ok",
        ("policy", "p"): "ok",
        ("actuator", "h"): "ok",
        ("sensor", "b"): "disabled",
    }
    assert sup.summary() == "3/4 ok"
    await sup.stop_all(0.1)


async def test_rebuild_keeps_what_did_not_change_and_carries_policy_memory() -> None:
    reg = registry()
    sup = PluginSupervisor(reg)
    await sup.start_all(loads(CONFIG.format(n=1), reg))
    a, p = sup.get("sensor", "a"), sup.policies()["p"]
    p.policy_state["seen"] = 3
    async with sup.lock:
        plan = await sup.rebuild(loads(CONFIG.format(n=2), reg))
        retired = sup.commit(plan)
    assert sup.get("sensor", "a") is a  # unchanged: the same running instance
    new_p = sup.policies()["p"]
    assert new_p is not p
    assert new_p.policy_state.get("seen") == 3
    assert retired == [p]
    assert await sup.stop_all(1.0, retired) == []
    await sup.stop_all(0.1)


async def test_stop_all_stops_each_under_one_budget_and_names_the_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = registry()
    sup = PluginSupervisor(reg)
    await sup.start_all(loads(CONFIG.format(n=1), reg))
    a = sup.get("sensor", "a")
    assert a is not None
    with caplog.at_level(logging.WARNING, logger="agentd"):
        pending = await sup.stop_all(0.2)
    assert pending == ["h"]
    # a stuck actuator did not hold the sensor
    assert a.obj.stopped
    assert a.state == "stopped"
    assert "still stopping after the budget, cancelled: actuator 'h'" in caplog.text


class Keyed(msgspec.Struct, forbid_unknown_fields=True):
    token: Annotated[str, SECRET]


class Refused:
    """A device that quotes its credentials back in the error (a broker, an HTTP API...)."""

    def __init__(self, config: Keyed) -> None:
        self.token = config.token
        if config.token.startswith("bad"):
            raise ValueError(f"malformed token {config.token}")

    async def start(self) -> None:
        raise OSError(f"login refused for token {self.token}")

    async def perceive(self) -> dict[str, float]:
        return {}


@pytest.mark.parametrize(
    ("policy", "token", "why"),
    [
        ("fail", "s3cr3t-t0ken", "failed to start: OSError: login refused for token"),
        ("skip", "s3cr3t-t0ken", "failed to start: OSError: login refused for token"),
        ("fail", "bad-s3cr3t-t0ken", "cannot be built: ValueError: malformed token"),
        ("skip", "bad-s3cr3t-t0ken", "cannot be built: ValueError: malformed token"),
    ],
)
async def test_failed_to_start_never_quotes_a_secret(
    policy: str, token: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry()
    reg.register(PluginSpec("refused", "sensor", Refused, Keyed))
    conf = loads(
        f'[sensors.dev]\nplugin = "refused"\ntoken = "{token}"\nstartup_error = "{policy}"\n',
        reg,
    )
    sup = PluginSupervisor(reg)
    caplog.set_level(logging.DEBUG, logger="agentd")
    if policy == "fail":
        with pytest.raises(PluginError) as err:
            await sup.start_all(conf)
        shown = str(err.value)
    else:
        await sup.start_all(conf)
        (status,) = sup.statuses()
        shown = status.last_error or ""
    assert why in shown
    assert "s3cr3t-t0ken" not in shown
    assert "s3cr3t-t0ken" not in caplog.text
    await sup.stop_all(0.1)
