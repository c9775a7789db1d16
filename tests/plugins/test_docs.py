"""Every config example in docs/plugins.md is valid, and every built-in is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentd import config as cfg
from agentd.plugins.builtin import BUILTINS
from agentd.plugins.registry import default_registry
from tests.plugins.modbus_helpers import stand_ins
from tests.uplink.broker import Mosquitto

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BLOCKS = [b for b in re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S) if "[project" not in b]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0] for b in BLOCKS])
def test_config_example_is_valid(block: str, tmp_path: Path) -> None:
    text = _faked(block, tmp_path, strict=False)
    if "[sensors." not in text:
        text += "\n[sensors.system]\n"
    if 'actuator = "log"' in text and "[actuators.log]" not in text:
        text += "\n[actuators.log]\n"
    conf = cfg.loads(text, default_registry)
    assert list(conf.instances())


def test_every_builtin_has_a_section_and_an_example() -> None:
    doc = DOC.read_text()
    for spec in BUILTINS:
        if not spec.factory.__module__.startswith("agentd.plugins.builtin"):
            continue  # test plugins added by tests/testplugins.py
        assert f"### `{spec.name}`" in doc, spec.name
        tables = [b for b in BLOCKS if re.search(rf'plugin = "{spec.name}"|\.{spec.name}\]', b)]
        assert tables, f"no config example for {spec.kind} {spec.name!r}"


#: stand-ins for the devices and programs the examples name, which this host does not have:
#: path -> (contents, executable)
FAKES = {
    "/sys/class/thermal/thermal_zone0/temp": ("48750\n", False),
    "/sys/bus/w1/devices/28-0000075e3b14/w1_slave": (
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        False,
    ),
    "/usr/bin/mmcli": (
        '#!/bin/sh\necho \'{"modem": {"signal": 80, "state": "connected"}}\'\n',
        True,
    ),
    "/usr/local/bin/queue-depth": ("#!/bin/sh\necho 3\n", True),
    "/usr/local/bin/blink": ("#!/bin/sh\nexit 0\n", True),
    "/usr/bin/gpioget": ("#!/bin/sh\necho 1\n", True),
    "/usr/bin/gpioset": ("#!/bin/sh\nexit 0\n", True),
    "/etc/agentd/tools/inverter.yaml": (
        """openapi: 3.0.3
info: {title: Inverter local API, version: "2.1"}
paths:
  /status:
    get:
      operationId: get_status
      responses: {"200": {description: power, energy and state}}
  /power-limit:
    post:
      operationId: set_power_limit
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [limit_pct]
              properties: {limit_pct: {type: integer, minimum: 0, maximum: 100}}
      responses: {"204": {description: applied}}
""",
        False,
    ),
}


def _faked(text: str, tmp: Path, strict: bool = True) -> str:
    """``text`` with the paths of FAKES replaced by stand-ins written under ``tmp``."""
    for path, (contents, executable) in FAKES.items():
        assert not strict or f'"{path}"' in text, f"{path} is no longer in docs/plugins.md"
        fake = tmp / "root" / path.lstrip("/")
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(contents)
        fake.chmod(0o755 if executable else 0o644)
        text = text.replace(f'"{path}"', f'"{fake}"')
    return text


#: the broker the `mqtt` examples name: a real mosquitto on an ephemeral port stands in, with
#: the retained state of the Zigbee2MQTT device they read
BROKER = "mqtt://127.0.0.1:1883"
Z2M_STATE = ("zigbee2mqtt/livingroom", '{"temperature": 27.5, "humidity": 41, "battery": 90}')


@pytest.fixture
def doc_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        topic, payload = Z2M_STATE
        cmd = ["mosquitto_pub", "-p", str(broker.port), "-r", "-t", topic, "-m", payload]
        subprocess.run(cmd, check=True, timeout=30)
        yield broker
    finally:
        broker.stop()


def _doc_config(tmp: Path, broker: str = BROKER) -> tuple[Path, dict[str, str]]:
    """Every example of docs/plugins.md in one config (their names are distinct, and the
    policies refer to the sensors and actuators of the other examples), with the devices and
    programs it names replaced by stand-ins under ``tmp``."""
    text = "\n".join(BLOCKS)
    assert f'"{BROKER}"' in text, f"{BROKER} is no longer in docs/plugins.md: drop the broker"
    text = _faked(text.replace(f'"{BROKER}"', f'"{broker}"'), tmp)
    creds = tmp / "credentials"
    creds.mkdir()
    (creds / "ops-token").write_text("Bearer t0ken\n")
    (creds / "ops-token").chmod(0o600)
    (creds / "inverter-token").write_text("Bearer inv-t0ken\n")
    (creds / "inverter-token").chmod(0o600)
    conf = tmp / "plugins-doc.toml"
    conf.write_text(text)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    return conf, env


@pytest.fixture
def modbus_devices(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """The Modbus devices the examples name, as local stand-ins (tests/plugins/modbus_helpers)."""
    with stand_ins(tmp_path / "modbus") as devices:
        yield devices.point


def test_every_example_passes_check_config_and_agentd_test(
    tmp_path: Path, modbus_devices: Callable[[Path], None], doc_broker: Mosquitto
) -> None:
    conf, env = _doc_config(tmp_path, doc_broker.url)
    modbus_devices(conf)
    check = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "ok\n", "")
    out = subprocess.run(
        [sys.executable, "-m", "agentd", "test", "--config", str(conf), "--ticks", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("ok: 2 ticks")
    rows = {tuple(line.split()[:3]) for line in out.stdout.splitlines() if line.startswith("  ")}
    # the stand-ins were read and parsed as the examples say
    assert ("soc_temp", "celsius", "48.75") in rows
    assert ("tank", "value", "23.125") in rows
    assert ("queue", "depth", "3") in rows
    assert ("modem", "modem.signal", "80") in rows
    assert ("z2m", "livingroom.temperature", "27.5") in rows
    assert "would run fan_relay.on" in out.stdout
    conf_sensors = set(re.findall(r"\[sensors\.([\w-]+)\]", "\n".join(BLOCKS)))
    assert conf_sensors == {r[0] for r in rows if r[0] not in ("SENSOR", "would", "ran")}
