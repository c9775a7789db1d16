"""The frozen binary has the uplink: ``agentd plugins`` lists the built-in ``mqtt`` uplink, and a
frozen agentd with an ``[uplinks.fleet]`` table connects to a local mosquitto, delivers its
observations and publishes its retained status (paho-mqtt is bundled)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec

from tests.uplink.broker import Collector, Mosquitto
from tests.uplink.test_daemon import config
from tests.utils import AgentProcess

NODE = "gw-test"


def test_frozen_agentd_lists_and_runs_the_mqtt_uplink(
    frozen_dir: Path, frozen_env: dict[str, str], tmp_path: Path, short_tmp: Path
) -> None:
    agentd = str(frozen_dir / "agentd")
    res = subprocess.run(
        [agentd, "plugins"], capture_output=True, text=True, timeout=60, env=frozen_env, check=False
    )
    assert res.returncode == 0, res.stderr
    # the mqtt sensor and actuator (agentd/plugins/builtin/mqtt_device.py) share the name
    rows = [x.split()[:3] for x in res.stdout.splitlines() if x.startswith("mqtt ")]
    assert ["mqtt", "uplink", "builtin"] in rows
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        with (
            Collector(broker.port, f"agentd/v1/{NODE}/+") as fleet,
            AgentProcess(
                short_tmp, config(broker.url), argv=[agentd], env=frozen_env, log_level="info"
            ) as agent,
        ):
            agent.wait_log(r"agentd \S+ started", timeout=30)

            def observations() -> int:
                n = 0
                for topic, payload, _ in fleet.snapshot():
                    if topic.endswith("/observations"):
                        n += len(msgspec.msgpack.decode(payload)["rows"])
                return n

            assert fleet.wait_for(lambda: observations() >= 5, 30), agent.log()[-2000:]
            assert agent.stop() == 0
            statuses = fleet.decoded("status")
            assert fleet.wait_for(lambda: fleet.decoded("status")[-1]["state"] == "offline", 10)
        assert statuses[0]["state"] == "online"
        assert "Traceback" not in agent.log()
    finally:
        broker.stop()
