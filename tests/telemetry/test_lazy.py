"""The OpenTelemetry SDK is loaded only when something uses it (issue #18): not at all for
``exporter = "none"`` until the first collection (`agentctl metrics`), which then carries the
control and action counts made before it; at once for an exporter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CODE = """
import json, sys
from pathlib import Path
from agentd.config import TelemetryConfig
from agentd.telemetry import Telemetry

def sdk():
    return sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))

class Req:
    cmd = "status"
    traceparent = None

class Ctx:
    request = Req()

tel = Telemetry(TelemetryConfig(exporter=sys.argv[2]), Path(sys.argv[1]))
out = {"sdk_at_start": sdk()}
tel.request_hook(Ctx())(None)
tel.request_hook(Ctx())("bad_request")
first = tel.collect()
tel.request_hook(Ctx())(None)
second = tel.collect()
out["sdk_after_collect"] = bool(sdk())
for name, points in (("first", first), ("second", second)):
    out[name] = sorted(
        [p.attributes["agentd.control.result"], p.value]
        for p in points
        if p.name == "agentd.control.requests"
    )
out["lateness"] = [p.name for p in second if p.name == "agentd.loop.tick.lateness"]
assert tel.shutdown(5.0)
print(json.dumps(out))
"""


def _run(tmp_path: Path, exporter: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path), exporter],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_no_exporter_loads_the_sdk_on_the_first_collection(tmp_path: Path) -> None:
    got = _run(tmp_path, "none")
    assert got["sdk_at_start"] == []
    assert got["sdk_after_collect"] is True
    # counted before the SDK was there, then by its counter
    assert got["first"] == [["bad_request", 1.0], ["ok", 1.0]]
    assert got["second"] == [["bad_request", 1.0], ["ok", 2.0]]
    assert got["lateness"] == ["agentd.loop.tick.lateness"]


def test_an_exporter_loads_the_sdk_at_once(tmp_path: Path) -> None:
    got = _run(tmp_path, "file")
    assert "opentelemetry.sdk.metrics" in got["sdk_at_start"]
    assert got["second"] == [["bad_request", 1.0], ["ok", 2.0]]
