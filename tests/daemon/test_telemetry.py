"""The daemon as a real subprocess: `agentctl health` follows a sensor that starts failing and
recovers; a control request continues the caller's trace (spans read back from the `file`
exporter); `agentctl metrics` shows the loop's and the control plane's counters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from agentd.control.client import Client
from tests.control.helpers import TESTPLUGINS
from tests.control.helpers import ctl as ctl_at
from tests.utils import AgentProcess, wait_for

CONFIG = """
[agent]
interval = 0.05
[log]
heartbeat = 0
[store]
enabled = {store}
[telemetry]
exporter = "{exporter}"
tick_sample_ratio = 0.0
[health]
# this test is about plugins: a loaded CI machine must not make it about lateness
lateness_p99 = 5.0
paused_after = 20.0     # intervals: 1 s
[sensors.system]
[sensors.switch]
fail_file = "{base}/fail"
[actuators.log]
"""


def _agent(base: Path, exporter: str = "none", store: bool = False) -> AgentProcess:
    config = CONFIG.format(base=base, exporter=exporter, store=str(store).lower())
    return AgentProcess(base, config, argv=TESTPLUGINS, log_level="info")


def _ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return ctl_at(agent.runtime_dir / "agentd.sock", *args)


def _ready(agent: AgentProcess) -> None:
    agent.wait_log(r"agentd \S+ started")
    wait_for(lambda: _ctl(agent, "ping").returncode == 0, 15, what="the control socket")


def test_a_forgotten_pause_is_failing(short_tmp: Path) -> None:
    with _agent(short_tmp) as agent:
        _ready(agent)
        assert _ctl(agent, "pause").returncode == 0
        assert _ctl(agent, "health").returncode == 0  # a pause is deliberate ...
        failing = wait_for(
            lambda: (p := _ctl(agent, "health")).returncode == 6 and p,
            15,
            what="health to turn failing",
        )
        # ... until it lasts longer than paused_after intervals
        assert failing.stdout.splitlines()[0] == "failing"
        assert failing.stdout.splitlines()[1].startswith("  the loop is paused: for ")
        assert _ctl(agent, "resume").returncode == 0
        wait_for(lambda: _ctl(agent, "health").returncode == 0, 15, what="health back to ok")
        assert agent.stop() == 0


def test_health_follows_a_failing_sensor_and_back(short_tmp: Path) -> None:
    with _agent(short_tmp) as agent:
        _ready(agent)
        first = _ctl(agent, "health")
        assert (first.returncode, first.stdout.strip()) == (0, "ok"), first
        (short_tmp / "fail").touch()
        degraded = wait_for(
            lambda: (p := _ctl(agent, "health")).returncode == 5 and p,
            15,
            what="health to turn degraded",
        )
        lines = degraded.stdout.splitlines()
        assert lines[0] == "degraded"
        assert "sensor 'switch' is degraded: OSError: switched off by" in lines[1]
        as_json = _ctl(agent, "health", "--json")
        assert as_json.returncode == 5
        report = json.loads(as_json.stdout)
        assert report["status"] == "degraded"
        assert any("'switch'" in r for r in report["reasons"])
        (short_tmp / "fail").unlink()
        wait_for(lambda: _ctl(agent, "health").returncode == 0, 15, what="health to return to ok")
        assert agent.stop() == 0


def _spans(state: Path) -> list[dict[str, Any]]:
    path = state / "telemetry" / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_control_request_continues_the_callers_trace(short_tmp: Path) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{trace_id}-{parent_id}-01"
    with _agent(short_tmp, exporter="file", store=True) as agent:
        _ready(agent)
        with Client(agent.runtime_dir / "agentd.sock", traceparent=traceparent) as client:
            result = client.call("act", {"actuator": "log", "action": "alert"})
            assert result["status"] == "ok"
            report = client.call("tick")
            client.call("flush")
        metrics = _ctl(agent, "metrics", "--json")
        assert metrics.returncode == 0, metrics.stderr
        table = _ctl(agent, "metrics", "agentd.loop")
        assert agent.stop() == 0
    points = json.loads(metrics.stdout)
    by_name = {(p["name"], tuple(sorted(p["attributes"].items()))): p for p in points}
    assert by_name[("agentd.loop.ticks", ())]["value"] >= report["tick"]
    act_requests = (
        ("agentd.control.command", "act"),
        ("agentd.control.result", "ok"),
    )
    assert by_name[("agentd.control.requests", act_requests)]["value"] == 1
    assert by_name[("process.memory.usage", ())]["value"] > 1e6
    # the store's commits are timed (the flush above made at least one)
    assert by_name[("agentd.store.write.duration", ())]["count"] >= 1
    assert by_name[("agentd.store.queue.depth", ())]["value"] >= 0
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["METRIC", "ATTRIBUTES", "VALUE", "UNIT"]
    assert any(line.startswith("agentd.loop.ticks ") for line in table.stdout.splitlines())

    spans = [s for s in _spans(agent.state_dir) if s["trace_id"] == trace_id]
    names = {s["name"]: s for s in spans}
    control_act = names["agentd.control act"]
    assert control_act["parent_span_id"] == parent_id
    assert control_act["attributes"]["agentd.control.result"] == "ok"
    actuator = names["agentd.actuator.act"]
    assert actuator["parent_span_id"] == control_act["span_id"]
    assert actuator["attributes"]["agentd.plugin"] == "log"
    assert actuator["attributes"]["agentd.status"] == "ok"
    # `tick` over the socket: the tick's whole span tree joins the caller's trace
    control_tick = names["agentd.control tick"]
    tick = names["agentd.tick"]
    assert tick["parent_span_id"] == control_tick["span_id"]
    assert tick["attributes"]["agentd.tick"] == report["tick"]
    assert tick["attributes"]["agentd.tick.sampled_by"] == "control"
    assert {"agentd.perceive", "agentd.decide", "agentd.act"} <= set(names)
