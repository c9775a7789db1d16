"""The example third-party plugin (docs/examples/agentd-plugin-example) installed with pip into
this environment, found through its entry point, and used by the loop of a real daemon.

The package is built from a copy (no build files land in the repository) and uninstalled again
if this test installed it, so the test is repeatable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from tests.utils import AgentProcess, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agentd-plugin-example"
DIST = "agentd-plugin-example"


def _installed() -> str | None:
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    already = _installed()
    if already is None:
        src = tmp_path_factory.mktemp("example") / "src"
        shutil.copytree(EXAMPLE, src)
        out = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", str(src)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    version = _installed()
    assert version == "1.0.0"
    try:
        yield version
    finally:
        if already is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "uninstall", "-y", "-q", DIST],
                capture_output=True,
                timeout=120,
                check=True,
            )


def test_agentd_lists_the_example_with_its_distribution(example_installed: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentd", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    mine = {p["name"]: p for p in doc["plugins"] if p["origin"].startswith(DIST)}
    assert set(mine) == {"example_counter", "example_append"}
    assert mine["example_counter"]["origin"] == f"{DIST}==1.0.0"
    assert mine["example_counter"]["kind"] == "sensor"
    assert mine["example_append"]["actions"] == ["note"]
    assert doc["problems"] == []


def test_the_loop_uses_the_example_sensor_and_actuator(
    example_installed: str, short_tmp: Path
) -> None:
    notes = short_tmp / "notes.jsonl"
    cfg = f"""
[agent]
interval = 0.1
[store]
enabled = false
[control]
enabled = false
[sensors.counter]
plugin = "example_counter"
step = 2.0
[policies.big]
plugin = "threshold"
metric = "counter.value"
above = 5.0
actuator = "notes"
action = "note"
params = {{ text = "counter passed 5" }}
[actuators.notes]
plugin = "example_append"
path = "{notes}"
"""
    with AgentProcess(short_tmp, cfg) as agent:
        agent.wait_log(r"started \(pid \d+\): 1 sensors, 1 policies, 1 actuators")
        wait_for(lambda: notes.exists() and notes.read_text().strip(), 15, what="a note")
        assert agent.stop() == 0
    line = json.loads(notes.read_text().splitlines()[0])
    assert line["action"] == "note"
    assert line["source"] == "big"
    assert line["params"]["text"] == "counter passed 5"
    assert line["params"]["value"] == 6.0  # the counter: 2, 4, 6 -> first above 5
    assert "Traceback" not in agent.log()
