"""The built-ins in the frozen one-file binary (the packaging tests' build, shared): a command
sensor's child gets the user's LD_LIBRARY_PATH (not the bundle's) and a scrubbed environment,
the exec actuator runs, and the webhook actuator speaks https with the bundled ssl module."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.packaging.conftest import frozen_dir, frozen_env  # noqa: F401 - fixtures
from tests.utils import AgentProcess, self_signed_cert, wait_for


class Hook(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []  # type: ignore[type-arg]

    def do_POST(self) -> None:
        Hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_hook(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    key, cert = self_signed_cert(tmp_path)
    Hook.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}/events", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


PROBE = "echo lib=${LD_LIBRARY_PATH:-none}; echo secret=${AGENTD_SECRET:-none}"


@pytest.mark.slow
def test_builtins_in_the_frozen_binary(
    frozen_dir: Path,  # noqa: F811
    frozen_env: dict[str, str],  # noqa: F811
    short_tmp: Path,
    https_hook: tuple[str, Path],
) -> None:
    url, cert = https_hook
    out = short_tmp / "out.txt"
    cfg = f"""
[agent]
interval = 0.2
[store]
enabled = false
[control]
enabled = false
[sensors.probe]
plugin = "command"
argv = ["/bin/sh", "-c", "{PROBE}"]
parse = "lines"
env_passthrough = ["LD_LIBRARY_PATH"]
[policies.seen]
plugin = "rules"
conditions = [{{ metric = "probe.lib", op = "!=", value = "" }}]
actuator = "out"
action = "note"
params = {{ text = "{{probe.lib}} {{probe.secret}}" }}
[policies.tell]
plugin = "rules"
conditions = [{{ metric = "probe.lib", op = "!=", value = "" }}]
actuator = "hook"
action = "seen"
params = {{ lib = "{{probe.lib}}" }}
[actuators.out]
plugin = "exec"
commands = {{ note = ["/bin/sh", "-c", "printf %s \\"$1\\" > {out}", "sh", "{{text}}"] }}
param_pattern = '[^\\n]*'  # the text holds a path; the default is one segment
[actuators.hook]
plugin = "webhook"
url = "{url}"
ca_file = "{cert}"
"""
    env = {**frozen_env, "LD_LIBRARY_PATH": "/opt/agentd-test-lib", "AGENTD_SECRET": "s3cret"}
    with AgentProcess(short_tmp, cfg, env=env, argv=[str(frozen_dir / "agentd")]) as agent:
        wait_for(lambda: out.exists() and out.read_text(), 60, what="the exec actuator")
        wait_for(lambda: Hook.bodies, 30, what="the https webhook")
        assert agent.stop(30) == 0
    # the user's library path, not the bundle's; the secret scrubbed
    assert out.read_text() == "/opt/agentd-test-lib none"
    assert Hook.bodies[0]["params"] == {"lib": "/opt/agentd-test-lib"}
    assert "Traceback" not in agent.log()
