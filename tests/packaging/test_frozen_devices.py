"""The frozen binary has the device plugins (issue 16): ``agentd plugins`` in the artifact lists
them, it reads a device's retained state from a real mosquitto and a real Modbus TCP device
(pymodbus is bundled), and it loads a YAML OpenAPI
document and calls the device it describes with params validated against the generated schema
(PyYAML and jsonschema, with its metaschemas, are bundled)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.plugins.modbus_helpers import Device
from tests.plugins.test_modbus import reference
from tests.uplink.broker import Mosquitto

DEVICE_PLUGINS = {
    ("mqtt", "sensor"),
    ("mqtt", "actuator"),
    ("modbus", "sensor"),
    ("modbus", "actuator"),
    ("openapi", "actuator"),
}


async def frozen(agentd: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(agentd),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


def readings(out: str, sensor: str) -> dict[str, str]:
    """``agentd test``'s table: metric -> value for ``sensor``."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == sensor:
            found[parts[1]] = parts[2]
    return found


def test_frozen_agentd_lists_the_device_plugins(
    frozen_dir: Path, frozen_env: dict[str, str]
) -> None:
    res = subprocess.run(
        [str(frozen_dir / "agentd"), "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=frozen_env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    listed = {(p["name"], p["kind"]) for p in json.loads(res.stdout)["plugins"]}
    assert listed >= DEVICE_PLUGINS, DEVICE_PLUGINS - listed
    assert all(p["origin"] == "builtin" for p in json.loads(res.stdout)["plugins"])


async def test_frozen_agentd_reads_a_modbus_tcp_device(
    frozen_dir: Path, frozen_env: dict[str, str], tmp_path: Path
) -> None:
    device = Device(unit=1)
    url = await device.start_tcp()
    try:
        await device.set("input", 0, reference(230.5, "float32", "ABCD"))
        await device.set("holding", 10, reference(-70000, "int32", "ABCD"))
        await device.set("coil", 3, [True])
        conf = tmp_path / "meter.toml"
        conf.write_text(
            f'[sensors.meter]\nplugin = "modbus"\nurl = "{url}"\nunit = 1\nregisters = [\n'
            '  { name = "voltage", table = "input", address = 0, type = "float32" },\n'
            '  { name = "counter", address = 10, type = "int32" },\n'
            '  { name = "pump", table = "coil", address = 3 },\n]\n'
        )
        rc, out = await frozen(
            frozen_dir / "agentd", frozen_env, "test", "--config", str(conf), "--ticks", "1"
        )
        assert rc == 0, out
        assert readings(out, "meter") == {"voltage": "230.5", "counter": "-70000", "pump": "true"}
        assert device.reads  # the values came over the wire
        assert "Traceback" not in out
    finally:
        await device.stop()


def test_frozen_agentd_reads_an_mqtt_device(
    frozen_dir: Path, frozen_env: dict[str, str], tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        state = '{"temperature": 21.5, "state": "ON"}'
        pub = ["mosquitto_pub", "-p", str(broker.port), "-r", "-t", "zigbee2mqtt/hall", "-m", state]
        subprocess.run(pub, check=True, timeout=30)
        conf = tmp_path / "z2m.toml"
        conf.write_text(
            f'[sensors.z2m]\nplugin = "mqtt"\nurl = "{broker.url}"\n'
            'topics = ["zigbee2mqtt/+"]\nfields = ["temperature", "state"]\n'
        )
        res = subprocess.run(
            [str(frozen_dir / "agentd"), "test", "--config", str(conf), "--ticks", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            env=frozen_env,
            check=False,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        got = readings(res.stdout, "z2m")
        assert got["hall.temperature"] == "21.5"
        assert got["hall.state"] == "true"
        assert "Traceback" not in res.stdout + res.stderr
    finally:
        broker.stop()


SPEC = """openapi: 3.0.3
info: {title: Pump, version: "1"}
paths:
  /pumps/{id}/speed:
    post:
      operationId: set_speed
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [rpm]
              properties: {rpm: {type: integer, minimum: 0, maximum: 3000}}
      responses: {"200": {description: ok}}
"""


@pytest.fixture
def pump() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    seen: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, body))
            answer = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


async def test_frozen_agentd_calls_an_openapi_device(
    frozen_dir: Path,
    frozen_env: dict[str, str],
    tmp_path: Path,
    pump: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    base, seen = pump
    spec = tmp_path / "pump.yaml"
    spec.write_text(SPEC)
    conf = tmp_path / "pump.toml"
    rule = (
        '[policies.run]\nplugin = "rules"\n'
        'conditions = [{{ metric = "system.cpu.percent", op = ">=", value = 0.0 }}]\n'
        'actuator = "pump"\naction = "set_speed"\nparams = {params}\n'
    )
    head = (
        f'[sensors.system]\n[actuators.pump]\nplugin = "openapi"\nspec = "{spec}"\n'
        f'base_url = "{base}"\n'
    )
    agentd = frozen_dir / "agentd"
    conf.write_text(head + rule.format(params="{ id = 7, body = { rpm = 1200 } }"))
    rc, out = await frozen(agentd, frozen_env, "check-config", str(conf))
    assert rc == 0, out
    rc, out = await frozen(agentd, frozen_env, "schema", "--config", str(conf), "actuator:pump")
    assert rc == 0, out
    schema = json.loads(out)["actions"]["set_speed"]
    assert schema["properties"]["body"]["properties"]["rpm"]["maximum"] == 3000
    rc, out = await frozen(agentd, frozen_env, "test", "--config", str(conf), "--act")
    assert rc == 0, out
    assert seen == [("POST", "/pumps/7/speed", b'{"rpm":1200}')]
    # the generated schema refuses rpm 9000 before any request is sent
    conf.write_text(head + rule.format(params="{ id = 7, body = { rpm = 9000 } }"))
    rc, out = await frozen(agentd, frozen_env, "test", "--config", str(conf), "--act")
    assert rc == 1, out
    assert "params.body.rpm: 9000 is greater than the maximum of 3000" in out
    assert len(seen) == 1  # nothing sent
    assert "Traceback" not in out
