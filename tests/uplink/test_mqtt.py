"""The mqtt transport alone against a real mosquitto: PUBACK reason codes, refused connects,
TLS and mutual TLS, the will, a lost link failing what is pending."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from agentd.uplink.base import Message, TransportError
from agentd.uplink.config import MqttConfig
from agentd.uplink.mqtt import MqttTransport
from tests.uplink.broker import Certs, Collector, Mosquitto

WILL = Message(topic="t/gw/status", payload=b"offline", retain=True)


def _ignore(_topic: str, _payload: bytes) -> None:
    pass


async def test_publish_is_acknowledged_with_success(broker: Mosquitto) -> None:
    t = MqttTransport(MqttConfig(url=broker.url))
    link = await t.connect("gw-a", WILL, _ignore)
    assert link.protocol == "mqtt5"
    assert link.receive_maximum == 20  # the broker's max_inflight_messages
    got = await asyncio.gather(
        *[t.send(Message(topic="t/gw/x", payload=b"%d" % i)) for i in range(50)]
    )
    assert all(d.ok for d in got)
    await t.close(1.0)


async def test_acl_denial_is_a_failure_puback(tmp_path: Path) -> None:
    b = Mosquitto(tmp_path / "b", acl="topic write t/gw/allowed\ntopic read t/#\n")
    b.start()
    try:
        t = MqttTransport(MqttConfig(url=b.url))
        await t.connect("gw-a", Message(topic="t/gw/allowed", payload=b"x"), _ignore)
        ok = await t.send(Message(topic="t/gw/allowed", payload=b"1"))
        denied = await t.send(Message(topic="t/gw/denied", payload=b"1"))
        assert ok.ok
        assert not denied.ok
        assert denied.code == 0x87
        await t.close(1.0)
    finally:
        b.stop()


async def test_mqtt311_fallback_has_no_reason_codes(broker: Mosquitto) -> None:
    t = MqttTransport(MqttConfig(url=broker.url, protocol="3.1.1"))
    link = await t.connect("gw-a", WILL, _ignore)
    assert link.protocol == "mqtt3.1.1"
    assert not link.reason_codes
    assert (await t.send(Message(topic="t/gw/x", payload=b"1"))).ok
    await t.close(1.0)


async def test_refused_credentials(tmp_path: Path) -> None:
    # an empty password file: nobody's credentials are right
    pw = tmp_path / "passwd"
    pw.write_text("")
    b = Mosquitto(tmp_path / "b", extra=f"password_file {pw}\n")
    try:
        b.start()
        secret = tmp_path / "secret"
        secret.write_text("wrong\n")
        secret.chmod(0o600)
        t = MqttTransport(MqttConfig(url=b.url, username="gw", password_file=str(secret)))
        with pytest.raises(TransportError) as err:
            await t.connect("gw-a", WILL, _ignore)
        assert err.value.refused
        assert err.value.code in (0x86, 0x87)
        assert "wrong" not in str(err.value)
    finally:
        b.stop()


async def test_lost_link_fails_what_is_pending(broker: Mosquitto) -> None:
    t = MqttTransport(MqttConfig(url=broker.url))
    await t.connect("gw-a", WILL, _ignore)
    broker.stop(signal.SIGKILL)
    fut = t.send(Message(topic="t/gw/x", payload=b"1"))
    with pytest.raises(TransportError):
        await asyncio.wait_for(fut, 10)
    assert await asyncio.wait_for(t.wait_lost(), 10) == "connection lost"
    with pytest.raises(TransportError):
        await t.send(Message(topic="t/gw/x", payload=b"1"))
    await t.close(1.0)


async def test_will_only_when_the_link_dies(broker: Mosquitto) -> None:
    with Collector(broker.port, "t/+/status") as sub:
        clean = MqttTransport(MqttConfig(url=broker.url))
        await clean.connect(
            "gw-a", Message(topic="t/a/status", payload=b"off", retain=True), _ignore
        )
        await clean.close(2.0)
        dropped = MqttTransport(MqttConfig(url=broker.url))
        await dropped.connect(
            "gw-b", Message(topic="t/b/status", payload=b"off", retain=True), _ignore
        )
        await dropped.close(0)
        assert sub.wait_for(lambda: any(m[0] == "t/b/status" for m in sub.snapshot()), 10)
        await asyncio.sleep(0.3)
        assert [m[0] for m in sub.snapshot()] == ["t/b/status"]


async def test_mutual_tls(tmp_path: Path, certs: Certs) -> None:
    b = Mosquitto(tmp_path / "b", certs=certs)
    b.start()
    try:
        good = MqttConfig(
            url=b.tls_url, ca=str(certs.ca), cert=str(certs.client), key=str(certs.client_key)
        )
        t = MqttTransport(good)
        await t.connect("gw-a", WILL, _ignore)
        assert (await t.send(Message(topic="t/gw/x", payload=b"1"))).ok
        await t.close(1.0)

        wrong_ca = MqttConfig(
            url=b.tls_url, ca=str(certs.other_ca), cert=str(certs.client), key=str(certs.client_key)
        )
        with pytest.raises(TransportError) as err:
            await MqttTransport(wrong_ca).connect("gw-a", WILL, _ignore)
        assert err.value.refused
        assert "certificate verify failed" in str(err.value)

        no_client_cert = MqttConfig(url=b.tls_url, ca=str(certs.ca))
        with pytest.raises(TransportError):
            await MqttTransport(no_client_cert).connect("gw-a", WILL, _ignore)
    finally:
        b.stop()


async def test_password_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(pw), "gw", "s3cret-pw"], check=True, timeout=30
    )
    pw.chmod(0o644)
    b = Mosquitto(tmp_path / "b", extra=f"allow_anonymous false\npassword_file {pw}\n")
    b.start()
    try:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "mqtt-password").write_text("s3cret-pw\n")
        (creds / "mqtt-password").chmod(0o600)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        t = MqttTransport(MqttConfig(url=b.url, username="gw", password_credential="mqtt-password"))
        await t.connect("gw-a", WILL, _ignore)
        assert (await t.send(Message(topic="t/gw/x", payload=b"1"))).ok
        await t.close(1.0)
        # readable by other users: refused before anything is sent, naming the fix
        (creds / "mqtt-password").chmod(0o644)
        with pytest.raises(TransportError) as err:
            await t.connect("gw-a", WILL, _ignore)
        assert "readable by other users" in str(err.value)
        assert "s3cret" not in str(err.value)
        # no credential: a one-line refusal naming what is missing, not a traceback
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")
        with pytest.raises(TransportError) as err:
            await t.connect("gw-a", WILL, _ignore)
        assert err.value.refused
        assert "CREDENTIALS_DIRECTORY" in str(err.value)
    finally:
        b.stop()


def test_config_errors_name_the_key() -> None:
    import msgspec

    from agentd.uplink.config import UplinkSettings

    for bad, needle in [
        ({"url": "http://x"}, "scheme"),
        ({"url": "mqtt://u:p@host"}, "credentials"),
        ({"url": "mqtt://host", "cert": "/c"}, "cert and key"),
        ({"url": "mqtt://host", "password_file": "/p"}, "username"),
        ({"url": "mqtt://host", "username": "u", "password_credential": "../x"}, "credential"),
    ]:
        with pytest.raises(msgspec.ValidationError, match=needle):
            msgspec.convert(bad, MqttConfig)
    with pytest.raises(msgspec.ValidationError, match="node"):
        msgspec.convert({"node": "a/b"}, UplinkSettings)
    with pytest.raises(msgspec.ValidationError, match="at most once"):
        msgspec.convert({"streams": ["events", "events"]}, UplinkSettings)
    assert MqttConfig(url="mqtts://h").endpoint().port == 8883
    assert MqttConfig(url="mqtt://h", ca="/ca").endpoint().tls


async def test_auto_falls_back_to_mqtt311_for_an_old_broker(broker: Mosquitto) -> None:
    """An MQTT 3.1.1-only broker answers an MQTT 5 CONNECT with the 3.1.1 CONNACK "unacceptable
    protocol version" (mosquitto 1.x does). Played by a relay in front of the real mosquitto
    that refuses protocol level 5 and passes everything else through."""
    levels: list[int] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(2)  # fixed header + a 1-byte remaining length
        body = await reader.readexactly(head[1])
        level = body[6]  # after the protocol name "\x00\x04MQTT"
        levels.append(level)
        if level == 5:
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", broker.port)
        up_w.write(head + body)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t = MqttTransport(MqttConfig(url=f"mqtt://127.0.0.1:{port}"))
        link = await t.connect("gw-a", WILL, _ignore)
        assert levels == [5, 4]
        assert link.protocol == "mqtt3.1.1"
        assert not link.reason_codes
        assert (await t.send(Message(topic="t/gw/x", payload=b"1"))).ok
        await t.close(1.0)
    finally:
        server.close()
        await server.wait_closed()


async def test_hostname_checking_is_on(tmp_path: Path, certs: Certs) -> None:
    """The server certificate names localhost and 127.0.0.1; "127.1" reaches the same address
    under another name, so a client that checks the name must refuse it."""
    b = Mosquitto(tmp_path / "b", certs=certs)
    b.start()
    try:
        tls = {"ca": str(certs.ca), "cert": str(certs.client), "key": str(certs.client_key)}
        ok = MqttTransport(MqttConfig(url=f"mqtts://127.0.0.1:{b.tls_port}", **tls))
        await ok.connect("gw-a", WILL, _ignore)
        await ok.close(1.0)
        other = MqttTransport(MqttConfig(url=f"mqtts://127.1:{b.tls_port}", **tls))
        with pytest.raises(TransportError) as err:
            await other.connect("gw-a", WILL, _ignore)
        assert err.value.refused
        assert "mismatch" in str(err.value).lower()
    finally:
        b.stop()


async def test_client_id_from_the_config_wins(broker: Mosquitto) -> None:
    t = MqttTransport(MqttConfig(url=broker.url, client_id="fleet-gw-7"))
    await t.connect("agentd-default", WILL, _ignore)
    await t.close(1.0)
    log = broker.log()
    assert " as fleet-gw-7 " in log
    assert "agentd-default" not in log
