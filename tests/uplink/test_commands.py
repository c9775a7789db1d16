"""Fleet commands in-process against a real mosquitto: the real UplinkEngine and MqttTransport
(the command topics on the uplink's own connection), a real Store on a temp file, the real
ActionRunner with the exec actuator running real subprocesses (each run appends a line to a
file, so "ran once" is counted on disk)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentd.actions import ActionRunner
from agentd.config import ActuatorCommon, ActuatorInstance, CommandsConfig
from agentd.model import Action, ActionResult, HealthReport, StatusReport
from agentd.plugins.builtin import exec_actuator
from agentd.plugins.handle import ActuatorRunner, build_handle
from agentd.store import Store
from agentd.uplink.cmdlink import build_command_channel
from agentd.uplink.commands import CommandChannel
from agentd.uplink.config import MqttConfig, UplinkSettings
from agentd.uplink.engine import UplinkEngine
from agentd.uplink.mqtt import MqttTransport
from tests.uplink.broker import Mosquitto
from tests.uplink.fleetside import Operator
from tests.uplink.helpers import NODE, PREFIX, Ticker, collector, open_store, until

PY = sys.executable
ALLOW = ("act:valve.*", "health", "uplink", "replay")


class Host:
    def __init__(self, runner: ActionRunner) -> None:
        self.runner = runner

    def status(self) -> StatusReport:
        raise NotImplementedError  # the daemon test asks for status

    def health(self) -> HealthReport:
        return HealthReport(status="ok", checked_at=time.time())

    def has_actuator(self, name: str) -> bool:
        return name in self.runner.actuators

    def validate_action(self, action: Action) -> str | None:
        return self.runner.validate(action)

    async def act(self, action: Action) -> ActionResult:
        return await self.runner.submit(action)


@dataclass
class Rig:
    store: Store
    engine: UplinkEngine
    channel: CommandChannel
    runs: Path
    config: dict[str, Any]

    def ran(self) -> list[str]:
        return self.runs.read_text().splitlines() if self.runs.exists() else []


def valve(runs: Path, store: Store) -> ActionRunner:
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    raw: dict[str, Any] = {
        "commands": {"open": [PY, "-c", script, str(runs), "{n}"]},
        "param_pattern": r"[0-9a-z-]{1,32}",
    }
    inst = ActuatorInstance(
        name="valve",
        plugin="exec",
        common=ActuatorCommon(),
        config=msgspec.convert(raw, exec_actuator.SPEC.config_type),
        raw=raw,
    )
    h = build_handle(ActuatorRunner, inst, exec_actuator.SPEC, None)
    return ActionRunner({"valve": h}, 10.0, ledger=store, manual_sinks=[store.journal_result])


@pytest.fixture
async def rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    store = await open_store(tmp_path / "state.db")
    runs = tmp_path / "runs"
    cfg: dict[str, Any] = {"allow": ALLOW}
    settings = UplinkSettings(node=NODE, batch_interval=0.1, reconnect_min=0.05, reconnect_max=0.5)
    transport = MqttTransport(MqttConfig(url=broker.url))
    channel, link, _ = build_command_channel(
        settings=settings,
        transport=transport,
        host=Host(valve(runs, store)),
        store=store,
        config=lambda: msgspec.convert(cfg, CommandsConfig),
        target=None,
        state_dir=tmp_path,
    )
    engine = UplinkEngine("fleet", settings, link, store)
    channel.verbs.uplink_state = engine.state
    await engine.start()
    assert await until(lambda: engine.state().connected, 10)
    try:
        yield Rig(store, engine, channel, runs, cfg)
    finally:
        await channel.stop()
        await engine.stop(1.0)
        await store.close()


def act(cid: str, n: str = "1", **kw: Any) -> dict[str, Any]:
    body = {"id": cid, "actuator": "valve", "action": "open", "params": {"n": n}}
    body["deadline"] = time.time() + 30
    body.update(kw)
    return body


async def ask(op: Operator, verb: str, body: Any, **kw: Any) -> tuple[str, dict[str, Any], Any]:
    await asyncio.to_thread(op.publish, verb, body, **kw)
    return await asyncio.to_thread(op.reply)


async def test_act_over_mqtt5_replies_with_the_correlation_data_and_runs_once(
    rig: Rig, broker: Mosquitto
) -> None:
    with Operator(broker.port, PREFIX, NODE) as op:
        topic, body, corr = await ask(op, "act", act("c-17", "a"), correlation=b"corr-17")
        assert topic == op.reply_topic
        assert corr == b"corr-17"
        assert body["ok"] is True, body
        assert body["id"] == "c-17"
        assert body["result"]["status"] == "ok"
        # the same id again (a redelivery, a resend): the recorded outcome, nothing runs
        _, again, corr2 = await ask(op, "act", act("c-17", "a"), correlation=b"corr-17b")
        assert corr2 == b"corr-17b"
        assert again["ok"] is True
        assert again["duplicate"] is True
    assert rig.ran() == ["a"]
    await rig.store.flush()
    results = await rig.store.query_actions(limit=10)
    assert [(r.action.key, r.action.source) for r in results] == [("mqtt:c-17", "mqtt:ops-1")]
    events = [e for e in await rig.store.query_events(limit=100) if e.kind == "command"]
    assert [(e.data["id"], e.data["ok"], e.data["duplicate"]) for e in events] == [
        ("c-17", True, False),
        ("c-17", True, True),
    ]


async def test_the_same_id_published_twice_at_once_runs_once(rig: Rig, broker: Mosquitto) -> None:
    with Operator(broker.port, PREFIX, NODE) as op:
        await asyncio.to_thread(op.publish, "act", act("c-2", "b"))
        await asyncio.to_thread(op.publish, "act", act("c-2", "b"))
        replies = [await asyncio.to_thread(op.reply) for _ in range(2)]
    assert all(r[1]["ok"] for r in replies), replies
    assert sorted(bool(r[1].get("duplicate")) for r in replies) == [False, True]
    assert rig.ran() == ["b"]


@pytest.mark.parametrize(
    ("verb", "make", "code"),
    [
        ("act", lambda: act("n-1", actuator="pump"), "not_allowed"),
        ("act", lambda: act("n-2", deadline=time.time() - 5), "expired"),
        ("act", lambda: {"id": "n-3", "actuator": "valve", "action": "open"}, "no_deadline"),
        ("act", lambda: b'{"id": "n-4", "actuator": ', "malformed"),
        ("act", lambda: act("n-5", deadlne=1), "malformed"),
        ("act", lambda: act("n-6", params={"n": "bad value!"}), "rejected"),
        ("reboot", lambda: {"id": "n-7", "deadline": time.time() + 30}, "unknown_verb"),
        ("config", lambda: {"id": "n-8", "config": "x", "version": "1"}, "no_deadline"),
    ],
)
async def test_refused_commands_run_nothing_and_say_why_in_one_line(
    rig: Rig, broker: Mosquitto, verb: str, make: Any, code: str
) -> None:
    body = make()  # now: a deadline made at collection time may have passed
    with Operator(broker.port, PREFIX, NODE) as op:
        _, reply, _ = await ask(op, verb, body)
        assert reply["ok"] is False
        assert reply["error"]["code"] == code, reply
        assert "\n" not in reply["error"]["message"]
        # the channel keeps working
        _, ok, _ = await ask(op, "act", act("after", "z"))
        assert ok["ok"] is True, ok
    assert rig.ran() == ["z"]


async def test_an_unknown_actuator_on_the_allow_list_is_not_found(
    rig: Rig, broker: Mosquitto
) -> None:
    rig.config["allow"] = ("act:*",)
    with Operator(broker.port, PREFIX, NODE) as op:
        _, reply, _ = await ask(op, "act", act("u-1", actuator="pump"))
    assert reply["error"]["code"] == "not_found", reply
    assert "pump" in reply["error"]["message"]
    assert rig.ran() == []


async def test_a_retained_command_is_ignored(rig: Rig, broker: Mosquitto) -> None:
    with Operator(broker.port, PREFIX, NODE) as op:
        _, reply, _ = await ask(op, "act", act("r-1", "r"), retain=True)
        assert reply["error"]["code"] == "malformed"
        assert "retained" in reply["error"]["message"]
    # and the broker's retained copy, delivered on every (re)subscribe, never runs either
    await rig.engine.transport.close(0)
    assert await until(lambda: rig.engine.state().connected, 10)
    await asyncio.sleep(0.5)
    assert rig.ran() == []


async def test_signatures(rig: Rig, broker: Mosquitto, tmp_path: Path) -> None:
    key = b"k" * 32
    keyfile = tmp_path / "key"
    keyfile.write_bytes(key + b"\n")
    keyfile.chmod(0o644)
    rig.config.update(signature="hmac-sha256", key_file=str(keyfile))
    with Operator(broker.port, PREFIX, NODE) as op:
        # a key other users can read is no key: refused, nothing runs
        _, exposed, _ = await ask(op, "act", act("s-0", "s"), key=key)
        assert exposed["error"]["code"] == "unavailable", exposed
        assert "readable by other users" in exposed["error"]["message"]
        keyfile.chmod(0o600)
        _, unsigned, _ = await ask(op, "act", act("s-1", "s"))
        _, forged, _ = await ask(op, "act", act("s-2", "s"), key=key, bad_signature=True)
        _, other, _ = await ask(op, "act", act("s-3", "s"), key=b"x" * 32)
        _, good, _ = await ask(op, "act", act("s-4", "t"), key=key)
    assert unsigned["error"]["code"] == "unsigned"
    assert forged["error"]["code"] == "bad_signature"
    assert other["error"]["code"] == "bad_signature"
    assert good["ok"] is True, good
    assert rig.ran() == ["t"]


async def test_mqtt5_expiry_and_rate_limit(rig: Rig, broker: Mosquitto) -> None:
    rig.config["rate_per_minute"] = 3
    with Operator(broker.port, PREFIX, NODE) as op:
        body = act("e-1", "e")
        del body["deadline"]
        _, ok, _ = await ask(op, "act", body, expiry=30)  # the expiry is the deadline
        assert ok["ok"] is True, ok
        codes = [
            (await ask(op, "health", {"id": f"h-{i}", "deadline": time.time() + 9}))[1]
            for i in range(3)
        ]
    assert [c["ok"] for c in codes] == [True, True, False]
    assert codes[2]["error"]["code"] == "rate_limited"
    assert codes[0]["result"]["status"] == "ok"


async def test_mqtt311_fallback_replies_on_the_reply_topic(rig: Rig, broker: Mosquitto) -> None:
    with Operator(broker.port, PREFIX, NODE, v5=False) as op:
        topic, reply, corr = await ask(op, "act", act("old-1", "o", sender="ops-311"))
    assert topic == f"{PREFIX}/{NODE}/reply/old-1"
    assert corr is None
    assert reply["ok"] is True
    await rig.store.flush()
    (result,) = await rig.store.query_actions(limit=5)
    assert result.action.source == "mqtt:ops-311"


async def test_replay_resends_held_rows_with_their_original_ids(
    rig: Rig, broker: Mosquitto
) -> None:
    ticker = Ticker(rig.store)
    with collector(broker.port, "replay-watch") as seen:
        await ticker.write(20, engine=rig.engine)
        assert await until(lambda: _ids(seen.decoded("observations")) == list(range(1, 21)))
        before = len(seen.decoded("observations"))
        with Operator(broker.port, PREFIX, NODE) as op:
            _, reply, _ = await ask(
                op,
                "replay",
                {
                    "id": "rp-1",
                    "stream": "observations",
                    "from": 5,
                    "to": 12,
                    "deadline": time.time() + 30,
                },
            )
        assert reply["ok"] is True, reply
        assert reply["result"]["rows"] == 8
        assert reply["result"]["missing"] == []
        assert await until(lambda: len(seen.decoded("observations")) > before)
        again = seen.decoded("observations")[before:]
    assert _ids(again) == list(range(5, 13))
    assert {e["epoch"] for e in again} == {rig.store.epoch}


def _ids(envelopes: list[dict[str, Any]]) -> list[int]:
    return [row[0] for e in envelopes if e.get("kind") == "rows" for row in e["rows"]]


async def test_a_group_command(rig: Rig, broker: Mosquitto) -> None:
    rig.config.update(groups=("site-7",))
    await rig.engine.transport.close(0)  # the group topic is subscribed on the next connect
    assert await until(lambda: rig.engine.state().connected, 10)
    await asyncio.sleep(0.3)
    with Operator(broker.port, PREFIX, NODE) as op:
        _, reply, _ = await ask(op, "act", act("g-1", "g"), group="site-7")
        assert reply["ok"] is True, reply
        await asyncio.to_thread(op.publish, "act", act("g-2", "h"), group="site-8")
        assert await asyncio.to_thread(op.no_reply, 1.0)  # not a group of this node
    assert rig.ran() == ["g"]


async def test_msgpack_when_the_content_type_says_so(rig: Rig, broker: Mosquitto) -> None:
    with Operator(broker.port, PREFIX, NODE) as op:
        _, reply, _ = await ask(op, "act", act("mp-1", "m"), msgpack=True)
        # the same bytes as JSON would not decode as msgpack: the content type decides
        _, wrong, _ = await ask(op, "act", b'{"id": "mp-2"}', msgpack=True)
    assert reply["_msgpack"] is True
    assert reply["ok"] is True, reply
    assert wrong["error"]["code"] == "malformed"
    assert rig.ran() == ["m"]
