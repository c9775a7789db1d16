"""The `openapi` actuator in a real daemon, called with `agentctl act` through the control
socket and journalled by the real store: the auth header read from a file reaches the server,
and never appears in an error, the journal, `agentctl plugin` or the daemon's log."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.helpers import Agent, ctl_json
from tests.plugins.test_openapi import PumpServer, write_spec
from tests.utils import wait_for

TOKEN = "Bearer pump-d4emon-7f3a9c21e5"


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict[str, str]]]

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append((self.command, self.path, headers))
        lines = [self.requestline, *(f"{k}: {v}" for k, v in self.headers.items())]
        head = "\r\n".join(lines).encode("latin-1")
        status, media, reply = PumpServer.route(self.command, self.path, head, body)
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer  # http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def device() -> Iterator[tuple[int, list[tuple[str, str, dict[str, str]]]]]:
    seen: list[tuple[str, str, dict[str, str]]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def act(agent: Agent, *args: str) -> dict[str, Any]:
    proc = agent.ctl("--json", "act", *args)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_the_auth_header_reaches_the_device_and_is_never_shown(
    short_tmp: Path, device: tuple[int, list[tuple[str, str, dict[str, str]]]]
) -> None:
    port, seen = device
    spec = write_spec(short_tmp / "pump.yaml")
    token = short_tmp / "pump.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = f"""
[agent]
interval = 0.2
[log]
heartbeat = 0
[store]
flush_interval = 0.05
[sensors.system]
cpu = false
temperatures = false
[actuators.pump]
plugin = "openapi"
spec = "{spec}"
base_url = "http://127.0.0.1:{port}/api"
header_files = {{ Authorization = "{token}" }}
"""
    with Agent(short_tmp, config) as agent:
        agent.ready()
        ok = act(agent, "pump", "get_pump", "--param", "id=p1", "--param", "unit=percent")
        assert ok["status"] == "ok", ok
        assert ok["output"] == {
            "status": 200,
            "body": {"id": "p1", "rpm": 1200, "unit": "percent"},
        }
        body = act(agent, "pump", "set_speed", "--param", "id=p1", "--param", 'body={"rpm": 900}')
        assert body["status"] == "ok", body
        echoed = act(agent, "pump", "echo")
        assert echoed["status"] == "ok", echoed
        assert "Authorization: <redacted>" in echoed["output"]["body"]
        denied = act(agent, "pump", "echo", "--param", "status=401")
        assert denied["status"] == "failed"
        assert denied["error"].startswith(
            "HTTPError: GET /echo answered 401: Authorization: <redacted> GET /api/echo"
        )
        bad = act(agent, "pump", "get_pump", "--param", "id=../admin")
        assert bad["status"] == "rejected"
        assert bad["error"].startswith("actuator 'pump': get_pump.params.id: '../admin' cannot")
        assert [(m, p) for m, p, _ in seen] == [
            ("GET", "/api/pumps/p1?unit=percent"),
            ("POST", "/api/pumps/p1/speed"),
            ("GET", "/api/echo"),
            ("GET", "/api/echo?status=401"),
        ]
        assert {h["authorization"] for _, _, h in seen} == {TOKEN}

        shown = [agent.ctl("plugin", "pump").stdout, agent.ctl("--json", "plugin", "pump").stdout]
        assert "header_files" in shown[0]

        def journaled() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = ctl_json(agent, "journal", "actions")
            return rows if len(rows) >= 5 else []

        rows = wait_for(journaled, 10, what="the five actions in the journal")
        assert agent.stop() == 0
    log = agent.log_path.read_text()
    assert "answered 401: Authorization: <redacted>" in log  # the failure was logged
    assert "Authorization: <redacted>" in json.dumps(rows)  # and the echo journalled
    for text in (*shown, json.dumps(rows), log):
        assert "pump-d4emon" not in text
        assert TOKEN not in text
