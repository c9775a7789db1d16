"""The built-in catalogue working together in a real daemon (uvloop, subprocess): a file
sensor read from a real file, `rules` and `threshold` policies, and the `exec`, `file` and
`webhook` actuators acting on real files and a real local HTTP server."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.utils import AgentProcess, wait_for


class Hook(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []  # type: ignore[type-arg]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_url() -> Iterator[str]:
    Hook.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


APPEND = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"


def test_sensor_policies_and_actuators_in_a_real_daemon(short_tmp: Path, hook_url: str) -> None:
    temp = short_tmp / "temp"
    temp.write_text("40000\n")
    led = short_tmp / "brightness"
    led.write_text("0\n")
    ran = short_tmp / "ran.txt"
    cfg = f"""
[agent]
interval = 0.1
[store]
enabled = false
[control]
enabled = false
[sensors.soc]
plugin = "file"
path = "{temp}"
scale = 0.001
metric = "celsius"
[policies.hot]
plugin = "rules"
conditions = [{{ metric = "soc.celsius", op = ">", value = 70.0 }}]
for_ticks = 2
actuator = "script"
action = "note"
params = {{ text = "hot {{soc.celsius:.1f}}" }}
[policies.led_on]
plugin = "rules"
conditions = [{{ metric = "soc.celsius", op = ">", value = 70.0 }}]
actuator = "leds"
action = "write"
params = {{ target = "status", value = 255 }}
[policies.tell_ops]
plugin = "threshold"
metric = "soc.celsius"
above = 70.0
actuator = "ops"
action = "overheat"
[actuators.script]
plugin = "exec"
commands = {{ note = ["{sys.executable}", "-c", "{APPEND}", "{ran}", "{{text}}"] }}
[actuators.leds]
plugin = "file"
targets = {{ status = "{led}" }}
[actuators.ops]
plugin = "webhook"
url = "{hook_url}"
retries = 2
"""
    with AgentProcess(short_tmp, cfg) as agent:
        agent.wait_log(r"tick 3: 1 readings, 0 errors, 0 actions")
        temp.write_text("75500\n")  # it gets hot
        wait_for(lambda: ran.exists() and ran.read_text(), 15, what="the exec actuator")
        wait_for(lambda: led.read_text() == "255\n", 15, what="the file actuator")
        wait_for(lambda: Hook.bodies, 15, what="the webhook")
        assert agent.stop() == 0
    assert ran.read_text() == "hot 75.5"
    body = Hook.bodies[0]
    assert (body["actuator"], body["action"], body["source"]) == ("ops", "overheat", "tell_ops")
    assert body["params"]["value"] == pytest.approx(75.5)
    assert "Traceback" not in agent.log()
