"""Fleet commands (issue 15) against a bare request/response echo, one local mosquitto, one run.

- round trip: an operator (paho, MQTT 5, response topic + correlation data) sends a command and
  waits for its reply, one at a time. agentd's side is the real command channel on the real
  uplink engine and transport, a real Store and ActionRunner: ``health`` (checks, no disk) and
  ``act`` on the ``log`` actuator (checks, the durable once-only claim, the run, the result
  flushed before the reply: two SQLite commits per command). The baseline is a bare paho
  client on the same broker that answers each request on its response topic with its
  correlation data. Target: p50 and p99 <= 1.5x the echo's.
- tick lateness under commands: ``agentd run`` at a 100 ms interval with an uplink carrying
  commands, its lateness p99 idle (no commands) vs while 100 ``act`` commands per second
  arrive (``health``: no disk; ``act``: two commits each), one daemon per phase, one after the
  other. Target: <= 2 ms.

``python -m bench.commands`` runs it alone (about a minute; ``--quick`` for less).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agentd.actions import ActionRunner
from agentd.config import ActuatorCommon, ActuatorInstance, CommandsConfig, StoreConfig
from agentd.model import Action, ActionResult, HealthReport, StatusReport
from agentd.plugins.builtin import log_actuator
from agentd.plugins.handle import ActuatorRunner, build_handle
from agentd.store import Store
from agentd.uplink.cmdlink import build_command_channel
from agentd.uplink.config import MqttConfig, UplinkSettings
from agentd.uplink.engine import UplinkEngine
from agentd.uplink.mqtt import MqttTransport
from bench.common import Figure, mosquitto, print_table, ratio_figure, start_agentd

NODE = "bench"
PREFIX = "agentd/v1"


def _broker(base: Path) -> contextlib.AbstractContextManager[int]:
    """mosquitto with TCP_NODELAY: a request/response figure must not measure Nagle's
    algorithm meeting delayed ACKs (about 40 ms per hop otherwise)."""
    return mosquitto(base, "set_tcp_nodelay true\n")


def _client(port: int, name: str) -> paho.Client:
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    c.connect("127.0.0.1", port, keepalive=30)
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    return c


class _Operator:
    """Sends one request at a time and times publish -> reply."""

    def __init__(self, port: int) -> None:
        self.reply_topic = f"ops/{uuid.uuid4().hex[:8]}"
        self.replies: queue.Queue[bytes] = queue.Queue()
        self.client = _client(port, "ops")
        ready = threading.Event()
        self.client.on_message = lambda _c, _u, m: self.replies.put(bytes(m.payload))
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        if not ready.wait(10):
            raise RuntimeError("operator did not subscribe")

    def rtt(self, topic: str, payload: bytes) -> float:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = uuid.uuid4().bytes
        props.ContentType = "application/json"
        started = time.perf_counter()
        self.client.publish(topic, payload, qos=1, properties=props)
        self.replies.get(timeout=30)
        return time.perf_counter() - started

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _Echo:
    """The baseline: answers every request on its response topic with its correlation data."""

    def __init__(self, port: int) -> None:
        self.client = _client(port, "echo")
        ready = threading.Event()

        def on_message(c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = m.properties.CorrelationData
            props.ContentType = "application/json"
            body = b'{"id":"x","ok":true,"result":{"status":"ok"}}'
            c.publish(m.properties.ResponseTopic, body, qos=1, properties=props)

        self.client.on_message = on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.loop_start()
        self.client.subscribe("echo/cmd/+", qos=1)
        if not ready.wait(10):
            raise RuntimeError("echo did not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _Host:
    def __init__(self, runner: ActionRunner) -> None:
        self.runner = runner

    def status(self) -> StatusReport:
        raise NotImplementedError

    def health(self) -> HealthReport:
        return HealthReport(status="ok", checked_at=time.time())

    def has_actuator(self, name: str) -> bool:
        return name in self.runner.actuators

    def validate_action(self, action: Action) -> str | None:
        return self.runner.validate(action)

    async def act(self, action: Action) -> ActionResult:
        return await self.runner.submit(action)


class _Agent:
    """The command channel on a real engine, in a uvloop loop on its own thread."""

    def __init__(self, port: int, base: Path) -> None:
        self.port, self.base = port, base
        self.loop = uvloop.new_event_loop()
        self.ready = threading.Event()
        self.done: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the command channel did not come up")

    def _main(self) -> None:
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self.done = asyncio.Event()
        store = Store(self.base / "bench.db", StoreConfig(synchronous="normal"))
        await store.open()
        inst = ActuatorInstance(
            name="log",
            plugin="log",
            common=ActuatorCommon(),
            config=msgspec.convert({}, log_actuator.SPEC.config_type),
            raw={},
        )
        h = build_handle(ActuatorRunner, inst, log_actuator.SPEC, None)
        runner = ActionRunner({"log": h}, 5.0, ledger=store, manual_sinks=[store.journal_result])
        settings = UplinkSettings(node=NODE, streams=("events",), batch_interval=0.5)
        cfg = CommandsConfig(allow=("act:log.*", "health"), rate_per_minute=60_000)
        channel, link, _ = build_command_channel(
            settings=settings,
            transport=MqttTransport(MqttConfig(url=f"mqtt://127.0.0.1:{self.port}")),
            host=_Host(runner),
            store=store,
            config=lambda: cfg,
            target=None,
            state_dir=self.base,
        )
        engine = UplinkEngine("bench", settings, link, store)
        await engine.start()
        while not engine.state().connected or channel.subscribe_error:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the SUBACK
        self.ready.set()
        await self.done.wait()
        await channel.stop()
        await engine.stop(1.0)
        await store.close()

    def close(self) -> None:
        if self.done is not None:
            self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(30)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered) * 1e3, p99 * 1e3


def _round_trips(port: int, base: Path, n: int) -> list[Figure]:
    logging.getLogger("agentd").setLevel(logging.ERROR)
    agent, echo, op = _Agent(port, base), _Echo(port), _Operator(port)
    try:

        def body(i: int, act: bool) -> bytes:
            d: dict[str, Any] = {"id": f"b-{uuid.uuid4().hex[:10]}", "deadline": time.time() + 60}
            if act:
                d.update(actuator="log", action="note", params={"message": f"bench {i}"})
            return json.dumps(d).encode()

        base_t = f"{PREFIX}/{NODE}/cmd/"
        for i in range(20):  # warm up every path
            op.rtt("echo/cmd/act", body(i, True))
            op.rtt(base_t + "health", body(i, False))
            op.rtt(base_t + "act", body(i, True))
        echo_s, health_s, act_s = [], [], []
        for i in range(n):  # interleaved: the same machine load for all three
            echo_s.append(op.rtt("echo/cmd/act", body(i, True)))
            health_s.append(op.rtt(base_t + "health", body(i, False)))
            act_s.append(op.rtt(base_t + "act", body(i, True)))
    finally:
        op.close()
        echo.close()
        agent.close()
    e50, e99 = _percentiles(echo_s)
    h50, h99 = _percentiles(health_s)
    a50, a99 = _percentiles(act_s)
    note = "baseline: a bare paho echo on the same broker"
    return [
        ratio_figure(
            "command round trip p50, health",
            h50,
            e50,
            "ms",
            target="<= 1.5x",
            max_ratio=1.5,
            note=note,
        ),
        ratio_figure(
            "command round trip p99, health",
            h99,
            e99,
            "ms",
            target="<= 1.5x",
            max_ratio=1.5,
            note=note,
        ),
        ratio_figure(
            "command round trip p50, act (claim+run+flush)",
            a50,
            e50,
            "ms",
            target="<= 1.5x",
            max_ratio=1.5,
            note=note,
        ),
        ratio_figure(
            "command round trip p99, act (claim+run+flush)",
            a99,
            e99,
            "ms",
            target="<= 1.5x",
            max_ratio=1.5,
            note=note,
        ),
    ]


CONFIG = """
[agent]
interval = 0.1
[log]
level = "warning"
heartbeat = 0
[commands]
allow = ["act:log.*", "health"]
rate_per_minute = 60000
max_concurrent = 64
[sensors.system]
[actuators.log]
[uplinks.fleet]
url = "mqtt://127.0.0.1:{port}"
node = "{node}"
"""


def _ctl(sock: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agentd", "ctl", "--socket", str(sock), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def _lateness(port: int, seconds: float, rate: float, verb: str = "act") -> tuple[float, int]:
    """One daemon: its lateness p99 (ms) after ``seconds`` with ``rate`` commands/s."""
    base = Path(tempfile.mkdtemp(prefix="agcmd", dir="/tmp"))
    node = f"lat{uuid.uuid4().hex[:6]}"
    (base / "agentd.toml").write_text(CONFIG.format(port=port, node=node))
    sock = base / "run" / "agentd.sock"
    agent = start_agentd(base / "agentd.toml", base)
    sent = 0
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() or not _ctl(sock, "uplink")[0]["connected"]:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agentd did not start")
            time.sleep(0.1)
        time.sleep(1.0)
        c = _client(port, "flood")
        c.loop_start()
        topic = f"{PREFIX}/{node}/cmd/{verb}"
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                d: dict[str, Any] = {"id": f"f-{sent}", "deadline": time.time() + 60}
                if verb == "act":
                    d.update(actuator="log", action="note", params={"message": "flood"})
                c.publish(topic, json.dumps(d).encode(), qos=1)
                sent += 1
            time.sleep(0.002)
        c.disconnect()
        c.loop_stop()
        status = _ctl(sock, "status")
        return float(status["loop"]["lateness_p99"]) * 1e3, sent
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        shutil.rmtree(base, ignore_errors=True)


def run(quick: bool = False) -> list[Figure]:
    n = 100 if quick else 400
    seconds = 10.0 if quick else 30.0
    base = Path(tempfile.mkdtemp(prefix="agcmdb", dir="/tmp"))
    try:
        with _broker(base) as port:
            figures = _round_trips(port, base, n)
            idle, _ = _lateness(port, seconds, 0.0)
            busy = {verb: _lateness(port, seconds, 100.0, verb) for verb in ("health", "act")}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()[0]
    for verb, (p99, sent) in busy.items():
        figures.append(
            Figure(
                f"tick lateness p99 at 100 ms, 100 {verb} commands/s",
                p99,
                idle,
                "ms",
                "<= 2 ms",
                p99 <= 2.0,
                p99 / idle if idle else None,
                note=f"baseline: the same daemon with no commands; {sent} {verb} commands in "
                f"{seconds:.0f}s; load average {load:.1f} on {os.cpu_count()} cores",
            )
        )
    return figures


def main() -> None:
    print_table(run(quick="--quick" in sys.argv))


if __name__ == "__main__":
    main()
