"""Issue 13's secrets, the plugin side: webhook headers from a systemd credential or a file,
errors that never quote a secret (a real HTTP server echoing the request back), and the
``agentd.secrets`` marks that let the control plane redact any plugin's config."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import msgspec
import pytest

from agentd.model import Action
from agentd.plugins.builtin import exec_actuator, file_actuator, webhook
from tests.plugins.test_actuators import Server
from tests.plugins.test_hardening import actuator


# -- 5. secrets --------------------------------------------------------------------------------
async def test_webhook_reads_headers_from_a_credential_and_a_file(
    http_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook-token").write_text("Bearer s3cr3t-from-systemd\n")
    (creds / "hook-token").chmod(0o400)
    token = tmp_path / "site.token"
    token.write_text("site-key-42")
    token.chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    r, h = actuator(
        webhook,
        url=http_server.url,
        header_credentials={"Authorization": "hook-token"},
        header_files={"X-Site-Key": str(token)},
    )
    await h.start()
    res = await r.run(Action(actuator="a", name="alert"))
    assert res.status == "ok", res.error
    _, headers, _ = http_server.requests[0]
    assert headers["authorization"] == "Bearer s3cr3t-from-systemd"
    assert headers["x-site-key"] == "site-key-42"


async def test_webhook_secret_sources_fail_start_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    _, h = actuator(webhook, url="http://127.0.0.1:1/", header_credentials={"Authorization": "t"})
    with pytest.raises(
        OSError, match=r"header_credentials\.Authorization: .*CREDENTIALS_DIRECTORY"
    ):
        await h.start()
    loose = tmp_path / "loose"
    loose.write_text("x")
    loose.chmod(0o644)
    _, h = actuator(webhook, url="http://127.0.0.1:1/", header_files={"X-K": str(loose)})
    with pytest.raises(OSError, match="readable by other users"):
        await h.start()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    _, h = actuator(webhook, url="http://127.0.0.1:1/", header_files={"X-K": str(fifo)})
    with pytest.raises(OSError, match="is a FIFO, not a regular file"):
        await asyncio.wait_for(h.start(), 2.0)


async def test_webhook_error_never_quotes_the_secret() -> None:
    token = "Bearer tok-" + uuid.uuid4().hex

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        auth = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"authorization"))
        page = b"<html><body><h1>denied</h1><p>you sent <b>%s</b></p><pre>%s</pre>" % (auth, head)
        writer.write(b"HTTP/1.1 401 No\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        r, _ = actuator(
            webhook,
            url=f"http://user:pw-{token[-6:]}@127.0.0.1:{port}/h",
            headers={"Authorization": token},
            retries=0,
        )
        res = await r.run(Action(actuator="a", name="alert"))
    finally:
        srv.close()
        await srv.wait_closed()
    assert res.status == "failed"
    err = str(res.error)
    assert token not in err
    assert token[-12:] not in err
    assert f"pw-{token[-6:]}" not in err
    assert "<html>" not in err
    assert "<pre>" not in err
    assert "<redacted>" in err  # the echoed header, taken out
    assert err.startswith(
        f"HTTPError: http://127.0.0.1:{port}/h answered 401: "
        "denied you sent Authorization: <redacted> POST /h"
    )
    assert len(err) < 200
    assert token not in str(res.output)


async def test_exec_error_line_never_carries_an_env_secret() -> None:
    r, _ = actuator(
        exec_actuator,
        commands={"leak": ["/bin/sh", "-c", 'echo "token is $API_TOKEN" >&2; exit 3']},
        env={"API_TOKEN": "tok-0123456789abcdef"},
    )
    res = await r.run(Action(actuator="a", name="leak"))
    assert res.status == "failed"
    assert res.error == "RuntimeError: /bin/sh exited with status 3: token is <redacted>"


def test_redact_hides_secret_fields() -> None:
    from agentd import secrets

    conf = msgspec.convert(
        {
            "url": "https://bot:pa55@hooks.example.com/h",
            "headers": {"Authorization": "Bearer x", "X-Site": "pi"},
            "header_credentials": {"X-Token": "tok"},
        },
        webhook.WebhookConfig,
    )
    shown = secrets.redact(conf)
    assert shown["headers"] == {"Authorization": "<redacted>", "X-Site": "<redacted>"}
    assert shown["url"] == "https://<redacted>@hooks.example.com/h"
    assert shown["header_credentials"] == {"X-Token": "tok"}  # a name, not the secret
    assert shown["request_timeout"] == 10.0
    assert "Bearer x" not in secrets.redact_text(f"failed: Bearer x at {conf.url}", conf)
    assert "pa55" not in secrets.redact_text(f"failed: Bearer x at {conf.url}", conf)
    assert secrets.secret_fields(webhook.WebhookConfig) == {"headers": "value", "url": "url"}
    plain = msgspec.convert({"targets": {"a": "/x"}}, file_actuator.FileActuatorConfig)
    assert secrets.redact(plain) == msgspec.to_builtins(plain)


async def test_a_reload_after_a_rotated_token_file_sends_the_new_token(
    http_server: Server, tmp_path: Path
) -> None:
    from agentd.config import loads
    from agentd.plugins.registry import default_registry
    from agentd.plugins.supervisor import PluginSupervisor

    token = tmp_path / "site.token"
    token.write_text("key-before")
    token.chmod(0o600)
    text = (
        f'[sensors.system]\n[actuators.hook]\nplugin = "webhook"\nurl = "{http_server.url}"\n'
        f'header_files = {{ X-Site-Key = "{token}" }}\n'
    )
    registry = default_registry()
    sup = PluginSupervisor(registry)
    await sup.start_all(loads(text, registry))
    try:
        first = sup.actuators()["hook"]
        async with sup.lock:  # nothing changed: the running actuator is kept
            sup.commit(await sup.rebuild(loads(text, registry)))
        assert sup.actuators()["hook"] is first
        token.write_text("key-after")  # rotated in place; the config table is the same
        async with sup.lock:
            retired = sup.commit(await sup.rebuild(loads(text, registry)))
        assert retired == [first]
        await sup.stop_all(1.0, retired)
        hook = sup.actuators()["hook"]
        await hook.obj.act(Action(actuator="hook", name="alert"))
        _, headers, _ = http_server.requests[-1]
        assert headers["x-site-key"] == "key-after"
        assert "key-after" not in hook.instance.config.reload_key()  # type: ignore[attr-defined]
    finally:
        await sup.stop_all(1.0)
