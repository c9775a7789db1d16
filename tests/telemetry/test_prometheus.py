"""The Prometheus endpoint ([telemetry] prometheus) of a real daemon, scraped by a real
Prometheus (Debian's /usr/bin/prometheus, started here on 127.0.0.1 with a temp config and a
one-second scrape interval, never the system service); the series are read back through its
HTTP API, and `promtool check metrics` passes on what the endpoint serves. Plus its bounds:
loopback only by default, a connection limit, and a port in use named at startup."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentd.telemetry.metrics import Produced
from agentd.telemetry.prometheus import MAX_CONNECTIONS, TIMEOUT, PrometheusEndpoint
from tests.utils import AgentProcess, wait_for

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
AGENTCTL = [sys.executable, "-m", "agentd", "ctl"]

CONFIG = """
[agent]
interval = 0.1
[log]
heartbeat = 0
[store]
enabled = false
[telemetry]
prometheus = "{listen}"
[sensors.tank]
plugin = "file"
path = "{base}/tank"
metric = "celsius"
export = true
[sensors.hidden]
plugin = "file"
path = "{base}/tank"
[sensors.system]
temperatures = false
export = true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[tuple[AgentProcess, int]]:
    port = free_port()
    (short_tmp / "tank").write_text("21.5\n")
    config = CONFIG.format(listen=f"127.0.0.1:{port}", base=short_tmp)
    with AgentProcess(short_tmp, config, log_level="info") as proc:
        proc.wait_log(r"agentd \S+ started")
        proc.wait_log(rf"prometheus: serving /metrics on 127\.0\.0\.1:{port}")
        yield proc, port
        assert proc.stop() == 0


@pytest.fixture
def prometheus(tmp_path: Path, agent: tuple[AgentProcess, int]) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.fail("no prometheus: apt-get install prometheus (.ci/run installs it)")
    _, target = agent
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: agentd\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 30, what="prometheus to answer")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _ready(base: str) -> bool:
    try:
        return get(base + "/-/ready")[0] == 200
    except OSError:
        return False


def query(base: str, promql: str) -> list[dict[str, Any]]:
    status, _, body = get(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, body
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def value_of(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_the_instruments_and_the_exported_readings(
    agent: tuple[AgentProcess, int], prometheus: str
) -> None:
    proc, _ = agent
    tank = 'agentd_sensor_reading{sensor="tank",metric="celsius",job="agentd"}'
    wait_for(lambda: value_of(prometheus, tank) == 21.5, 30, what="the tank reading scraped")
    (proc.base / "tank").write_text("17.25\n")
    wait_for(lambda: value_of(prometheus, tank) == 17.25, 30, what="the new tank reading")
    # the sensor without export = true is not there; the other exported one is
    assert query(prometheus, 'agentd_sensor_reading{sensor="hidden"}') == []
    cpu = value_of(prometheus, 'agentd_sensor_reading{sensor="system",metric="cpu.percent"}')
    assert cpu is not None
    assert 0.0 <= cpu <= 100.0
    # agentd's own instruments, as `agentctl metrics` has them
    ticks = value_of(prometheus, "agentd_loop_ticks_total")
    assert ticks is not None
    assert ticks > 0
    assert value_of(prometheus, "up{job='agentd'}") == 1.0
    lateness = query(prometheus, "agentd_loop_tick_lateness_seconds_bucket")
    assert {s["metric"]["le"] for s in lateness} >= {"0.001", "+Inf"}
    stages = query(prometheus, "agentd_loop_stage_duration_seconds_count")
    assert {s["metric"]["agentd_loop_stage"] for s in stages} == {
        "perceive",
        "decide",
        "act",
        "tick",
    }
    rss = value_of(prometheus, "process_memory_usage_bytes")
    assert rss is not None
    assert rss > 1_000_000


def _series_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_promtool_passes_and_every_agentctl_metric_is_served(
    agent: tuple[AgentProcess, int],
) -> None:
    if PROMTOOL is None:
        pytest.fail("no promtool: apt-get install prometheus (.ci/run installs it)")
    proc, port = agent
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: "agentd_sensor_reading{" in get(url)[2], 15, what="a reading served")
    # promtool reads the classic text format; the OpenMetrics one is what the real
    # Prometheus above negotiates and parses
    status, ctype, body = get(url)
    assert (status, ctype.split(";")[0]) == (200, "text/plain")
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    status, ctype, om = get(url, "application/openmetrics-text; version=1.0.0")
    assert (status, ctype.split(";")[0]) == (200, "application/openmetrics-text")
    assert om.endswith("# EOF\n")
    names = _series_names(get(url)[2])
    ctl = subprocess.run(
        [*AGENTCTL, "--socket", str(proc.runtime_dir / "agentd.sock"), "metrics", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    renamed = {
        "process.open_file_descriptor.count": "process_open_fds",
        "process.thread.count": "process_threads",
    }
    for point in json.loads(ctl.stdout):
        if point["name"] == "agentd.control.requests":
            continue  # counted by that very request: the scrape came before it
        stem = renamed.get(point["name"], point["name"].replace(".", "_"))
        assert any(n.startswith(stem) for n in names), (point["name"], sorted(names))
    assert get(f"http://127.0.0.1:{port}/other")[0] == 404


def test_loopback_only_and_bounded(short_tmp: Path) -> None:
    port = free_port()
    endpoint = PrometheusEndpoint(str(port), Produced())  # a bare port: loopback
    endpoint.start()
    idle: list[socket.socket] = []
    try:
        assert endpoint.address == ("127.0.0.1", port)
        listening = [
            c.laddr
            for c in psutil.Process().net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert [a.ip for a in listening] == ["127.0.0.1"]
        # connections that send nothing take every slot: one more is told to come back
        for _ in range(MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.5)
        status, _, _ = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 503
        # an idle connection is dropped after TIMEOUT, and its slot is free again
        started = time.monotonic()
        assert idle[0].recv(1) == b""
        assert time.monotonic() - started < TIMEOUT + 2
        wait_for(lambda: get(f"http://127.0.0.1:{port}/metrics")[0] == 200, 10, what="a slot")
    finally:
        for s in idle:
            s.close()
        endpoint.close()


def test_a_port_in_use_is_one_line_at_startup(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (short_tmp / "tank").write_text("1\n")
        config = CONFIG.format(listen=f"127.0.0.1:{port}", base=short_tmp)
        with AgentProcess(short_tmp, config, log_level="info") as proc:
            assert proc.proc is not None
            assert proc.proc.wait(30) == 1
        log = proc.log()
        assert (
            f"telemetry.prometheus: cannot listen on 127.0.0.1:{port}: Address already in use"
            in log
        )
        assert "Traceback" not in log
