"""Built-in actuators: exec (real subprocesses), file (real files), webhook (a real local HTTP
server), session (the SessionAccess capability), each through the real ActionRunner."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentd.actions import ActionRunner
from agentd.config import ActuatorCommon, ActuatorInstance
from agentd.model import Action
from agentd.plugins.builtin import exec_actuator, file_actuator, session, webhook
from agentd.plugins.capabilities import MemorySessions
from agentd.plugins.handle import ActuatorRunner, build_handle
from tests.utils import self_signed_cert

PY = sys.executable


def runner(module, name: str = "a", capabilities=None, **raw: Any) -> ActionRunner:  # type: ignore[no-untyped-def]
    common_keys = set(ActuatorCommon.__struct_fields__)
    common = msgspec.convert({k: v for k, v in raw.items() if k in common_keys}, ActuatorCommon)
    own = {k: v for k, v in raw.items() if k not in common_keys}
    inst = ActuatorInstance(
        name=name,
        plugin=module.SPEC.name,
        common=common,
        config=msgspec.convert(own, module.SPEC.config_type),
        raw=raw,
    )
    h = build_handle(ActuatorRunner, inst, module.SPEC, capabilities)
    return ActionRunner({name: h}, 5.0)


# -- exec --------------------------------------------------------------------------------------
async def test_exec_runs_allowlisted_argv_with_placeholders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = runner(
        exec_actuator,
        commands={
            "write": [
                PY,
                "-c",
                "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                str(out),
                "{value}",
            ],
            "fail": [PY, "-c", "import sys; print('bad thing'); sys.exit(4)"],
        },
        param_pattern=r"[^\n]*",  # the default (one path segment) refuses the '/' below
    )
    res = await r.run(Action(actuator="a", name="write", params={"value": "a b; rm -rf /"}))
    assert res.status == "ok", res.error
    assert out.read_text() == "a b; rm -rf /"  # one argv element, never a shell
    assert res.output["returncode"] == 0
    failed = await r.run(Action(actuator="a", name="fail"))
    assert failed.status == "failed"
    assert failed.error == f"RuntimeError: {PY} exited with status 4: bad thing"


async def test_exec_rejects_unknown_commands_options_and_missing_params() -> None:
    r = runner(exec_actuator, commands={"echo": ["/bin/echo", "{msg}"]})
    unknown = await r.run(Action(actuator="a", name="rm"))
    assert unknown.status == "rejected"
    assert unknown.error == "actuator 'a': no command 'rm' in the allowlist (allowed: echo)"
    option = await r.run(Action(actuator="a", name="echo", params={"msg": "--help"}))
    assert option.status == "rejected"
    assert option.error == "actuator 'a': echo.params: '--help' is not allowed as an argument"
    missing = await r.run(Action(actuator="a", name="echo"))
    assert missing.error == "actuator 'a': echo.params.msg: required (a string or number)"
    ok = await r.run(Action(actuator="a", name="echo", params={"msg": 42}))
    assert (ok.status, ok.output["stdout"]) == ("ok", "42\n")


async def test_exec_truncates_output_and_times_out() -> None:
    r = runner(
        exec_actuator,
        commands={
            "loud": [PY, "-c", "print('y' * 100000)"],
            "hang": [PY, "-c", "import time; time.sleep(60)"],
        },
        max_output=100,
        run_timeout=0.5,
    )
    loud = await r.run(Action(actuator="a", name="loud"))
    assert loud.status == "ok"
    assert len(loud.output["stdout"]) == 100
    assert loud.output["truncated"] is True
    hang = await r.run(Action(actuator="a", name="hang"))
    assert hang.status == "timeout"
    assert hang.error == f"TimeoutError: {PY} still running after 0.5s: killed"


async def test_exec_memory_limit_applies() -> None:
    r = runner(
        exec_actuator,
        commands={"hog": [PY, "-c", "x = bytearray(512 * 1024 * 1024); print('got it')"]},
        limits={"memory_mb": 200},
    )
    res = await r.run(Action(actuator="a", name="hog"))
    assert res.status == "failed"
    assert "MemoryError" in str(res.output) or "MemoryError" in str(res.error)


async def test_exec_is_not_idempotent_a_key_runs_once(tmp_path: Path) -> None:
    count = tmp_path / "count"
    r = runner(
        exec_actuator,
        commands={"bump": [PY, "-c", f"open({str(count)!r}, 'a').write('x')"]},
    )
    for _ in range(3):
        await r.run(Action(actuator="a", name="bump", key="reboot-2024-01-01"))
    assert count.read_text() == "x"


# -- file --------------------------------------------------------------------------------------
async def test_file_actuator_writes_allowlisted_targets(tmp_path: Path) -> None:
    led = tmp_path / "brightness"
    led.write_text("0\n")
    gpio = tmp_path / "value"
    gpio.write_text("0\n")
    r = runner(
        file_actuator,
        targets={"led": str(led), "gpio": {"path": str(gpio), "values": ["0", "1"]}},
    )
    ok = await r.run(Action(actuator="a", name="write", params={"target": "led", "value": 255}))
    assert ok.status == "ok", ok.error
    assert led.read_text() == "255\n"
    on = await r.run(Action(actuator="a", name="write", params={"target": "gpio", "value": True}))
    assert on.status == "ok"
    assert gpio.read_text() == "1\n"
    bad = await r.run(Action(actuator="a", name="write", params={"target": "gpio", "value": 7}))
    assert bad.status == "rejected"
    assert "write.params.value: '7' is not allowed for 'gpio'" in str(bad.error)
    path = await r.run(
        Action(actuator="a", name="write", params={"target": "/etc/passwd", "value": 1})
    )
    assert path.status == "rejected"
    assert "write.params.target: '/etc/passwd' is not an allowed target" in str(path.error)


async def test_file_actuator_does_not_create_missing_nodes(tmp_path: Path) -> None:
    r = runner(file_actuator, targets={"pwm": str(tmp_path / "pwm0" / "duty_cycle")})
    res = await r.run(Action(actuator="a", name="write", params={"target": "pwm", "value": 5}))
    assert res.status == "failed"
    assert "FileNotFoundError" in str(res.error)


# -- webhook -----------------------------------------------------------------------------------
class Server:
    """A real HTTP/1.1 server on 127.0.0.1 that answers from a script of (status, delay)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: list[tuple[int, float]] = []
        self.chunked = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (h := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((line.strip(), headers, body))
            status, delay = self.script.pop(0) if self.script else (200, 0.0)
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # the server closes under a slow answer
                return
            reply = json.dumps({"n": len(self.requests)}).encode()
            if self.chunked:
                head = f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                writer.write(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(reply), reply))
            else:
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(reply)}\r\n\r\n".encode() + reply
                )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"


async def test_webhook_posts_the_action_as_json(http_server: Server) -> None:
    r = runner(webhook, url=http_server.url, headers={"Authorization": "Bearer t0k"})
    action = Action(
        actuator="a", name="alert", params={"temp": 81.5}, priority=3, source="hot", key="k-1"
    )
    res = await r.run(action)
    assert res.status == "ok", res.error
    assert res.output == {"status": 200, "body": '{"n": 1}'}
    line, headers, body = http_server.requests[0]
    assert line == "POST /hook?x=1 HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer t0k"
    assert headers["idempotency-key"] == "k-1"
    assert headers["host"] == f"127.0.0.1:{http_server.port}"
    doc = json.loads(body)
    assert {k: doc[k] for k in ("actuator", "action", "params", "priority", "source", "key")} == {
        "actuator": "a",
        "action": "alert",
        "params": {"temp": 81.5},
        "priority": 3,
        "source": "hot",
        "key": "k-1",
    }


async def test_webhook_never_puts_a_line_break_into_the_request_head(http_server: Server) -> None:
    r = runner(webhook, url=http_server.url)
    res = await r.run(Action(actuator="a", name="alert", key="k\r\nX-Evil: 1"))
    assert res.status == "ok"
    _, headers, body = http_server.requests[0]
    assert "x-evil" not in headers
    assert "idempotency-key" not in headers
    assert json.loads(body)["key"] == "k\r\nX-Evil: 1"  # still in the JSON body, escaped


async def test_webhook_retries_server_errors_then_succeeds(http_server: Server) -> None:
    http_server.script = [(500, 0.0), (503, 0.0)]
    http_server.chunked = True
    r = runner(webhook, url=http_server.url, retries=3, backoff=0.01)
    res = await r.run(Action(actuator="a", name="alert"))
    assert (res.status, res.attempts) == ("ok", 3)
    assert res.output == {"status": 200, "body": '{"n": 3}'}


async def test_webhook_reports_status_and_timeout(http_server: Server) -> None:
    http_server.script = [(404, 0.0), (200, 5.0)]
    r = runner(webhook, url=http_server.url, request_timeout=0.3, retries=0)
    notfound = await r.run(Action(actuator="a", name="alert"))
    assert notfound.status == "failed"
    assert notfound.error == f'HTTPError: {http_server.url} answered 404: {{"n": 1}}'
    slow = await r.run(Action(actuator="a", name="alert"))
    assert slow.status == "timeout"
    assert slow.error == f"TimeoutError: no answer from {http_server.url} within 0.3s"


async def test_webhook_connection_refused_fails_cleanly() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    r = runner(webhook, url=f"http://127.0.0.1:{port}/")
    res = await r.run(Action(actuator="a", name="alert"))
    assert res.status == "failed"
    assert "ConnectionRefusedError" in str(res.error)


# -- session -----------------------------------------------------------------------------------
async def test_session_actuator_writes_through_its_capability() -> None:
    sessions = MemorySessions()
    r = runner(session, capabilities={"sessions": sessions}, prefix="ops/", ttl=60.0)
    put = await r.run(
        Action(actuator="a", name="put", params={"session": "mode", "value": {"maint": True}})
    )
    assert (put.status, put.output) == ("ok", {"session": "ops/mode", "version": 1})
    again = await r.run(Action(actuator="a", name="put", params={"session": "mode", "value": 2}))
    assert again.output["version"] == 2
    assert sessions.get("ops/mode") == 2
    bad = await r.run(Action(actuator="a", name="put", params={"session": "../x", "value": 1}))
    assert bad.status == "rejected"
    gone = await r.run(Action(actuator="a", name="delete", params={"session": "mode"}))
    assert gone.output == {"session": "ops/mode", "deleted": True}
    assert sessions.get("ops/mode") is None


def test_session_actuator_without_the_capability_is_refused() -> None:
    from agentd.errors import PluginError

    with pytest.raises(PluginError) as err:
        runner(session)
    assert (
        str(err.value)
        == "plugin 'a' (builtin): needs 'sessions', which this agentd does not provide"
    )


# -- webhook over https --------------------------------------------------------------------------
@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost made by the openssl CLI."""
    return self_signed_cert(tmp_path)


async def test_webhook_https_checks_the_certificate(tls_cert: tuple[Path, Path]) -> None:
    import ssl

    key, cert = tls_cert
    srv = Server()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    url = f"https://localhost:{port}/hook"
    try:
        trusted = runner(webhook, url=url, ca_file=str(cert))
        ok = await trusted.run(Action(actuator="a", name="alert", params={"n": 1}))
        assert ok.status == "ok", ok.error
        assert json.loads(srv.requests[0][2])["params"] == {"n": 1}
        untrusted = runner(webhook, url=url)  # the system store does not know this cert
        bad = await untrusted.run(Action(actuator="a", name="alert"))
        assert bad.status == "failed"
        assert "CERTIFICATE_VERIFY_FAILED" in str(bad.error)
        lab = runner(webhook, url=url, verify=False)
        assert (await lab.run(Action(actuator="a", name="alert"))).status == "ok"
    finally:
        server.close()
        await server.wait_closed()
