"""The server against raw frames from a real socket: bad input answered and counted, limits,
pipelining (in process: tests/control/inprocess.py), the stale/live socket rules, socket
activation, cleanup at shutdown (a real agentd)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from agentd.control.protocol import FrameBuffer, Message, StateEvent, encode_frame
from agentd.control.state import ADMIN_RESERVED
from agentd.model import TickReport
from tests.control.helpers import TESTPLUGINS, Agent, Raw, config, frame, wait_ticks
from tests.control.inprocess import CONFIG, Served, ServedThread, run_server
from tests.utils import wait_for


def _errors(agent: Agent | Served) -> dict[str, int]:
    errors: dict[str, int] = agent.call("status")["control"]["errors"]
    return errors


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


def test_bad_input_is_answered_counted_and_harmless(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    agent = served
    before = _errors(agent)
    with Raw(agent.socket) as raw:
        # not msgpack at all (0xc1 is never used in msgpack)
        raw.send(frame(b"\xc1\xc1"))
        assert raw.read() == {
            "id": None,
            "error": {"code": "bad_request", "message": "the frame is not a msgpack message"},
        }
        # msgpack, wrong shape: the id is still echoed when it can be read
        raw.send(frame({"id": 7, "command": "ping"}))
        msg = raw.read()
        assert msg is not None
        assert msg["id"] == 7
        assert msg["error"]["code"] == "bad_request"
        assert "cmd" in msg["error"]["message"]
        raw.send(frame([1, 2, 3]))
        msg = raw.read()
        assert msg is not None
        assert msg["error"]["code"] == "bad_request"
        raw.send(frame(b""))  # an empty frame
        msg = raw.read()
        assert msg is not None
        assert msg["error"]["code"] == "bad_request"
        # unknown command, bad args
        raw.send(frame({"id": "a", "cmd": "rm -rf"}))
        assert raw.read() == {
            "id": "a",
            "error": {"code": "unknown_command", "message": "unknown command 'rm -rf'"},
        }
        raw.send(frame({"id": 8, "cmd": "plugin", "args": {"name": "x", "extra": 1}}))
        msg = raw.read()
        assert msg is not None
        assert msg["error"] == {
            "code": "bad_args",
            "message": "plugin: Object contains unknown field `extra`",
        }
        raw.send(frame({"id": 9, "cmd": "hello", "args": {"protocol": 99}}))
        msg = raw.read()
        assert msg is not None
        assert msg["error"]["code"] == "unsupported_version"
        # the same connection still works after all that
        assert raw.call("ping") == "pong"
    with Raw(agent.socket) as raw:
        # a frame over the limit: answered, then the connection is closed
        raw.send((2 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100)
        msg = raw.read()
        assert msg is not None
        assert msg["error"]["code"] == "bad_frame"
        assert "exceeds the limit of 1048576 bytes" in msg["error"]["message"]
        assert raw.read() is None
    with Raw(agent.socket) as raw:
        raw.send((100).to_bytes(4, "big") + b"trunc")  # truncated: peer goes away mid-frame
    after = wait_for(
        lambda: (e := _errors(agent)).get("bad_frame", 0) >= before.get("bad_frame", 0) + 2 and e,
        5,
    )
    assert after["bad_request"] - before.get("bad_request", 0) == 4
    assert after["unknown_command"] - before.get("unknown_command", 0) == 1
    assert after["bad_args"] - before.get("bad_args", 0) == 1
    assert not _tracebacks(caplog)


def test_pipelined_requests_are_all_answered_in_order(served: Served) -> None:
    agent = served
    with Raw(agent.socket) as raw:
        raw.send(b"".join(frame({"id": i, "cmd": "ping"}) for i in range(1000)))
        ids = []
        for _ in range(1000):
            msg = raw.read()
            assert msg is not None
            assert msg["result"] == "pong"
            ids.append(msg["id"])
        assert ids == list(range(1000))
        # a slow command among fast ones: every id answered exactly once
        raw.send(frame({"id": "t", "cmd": "tick"}) + frame({"id": "p", "cmd": "ping"}))
        got = {raw.read()["id"] for _ in range(2)}  # type: ignore[index]
        assert got == {"t", "p"}


def test_limits_connections_and_idle_timeout(short_tmp: Path) -> None:
    control = "[control]\nmax_connections = 3\nidle_timeout = 0.5\n"
    with ServedThread(short_tmp / "run", CONFIG + control) as agent:
        # root is admin: past the limit it gets the places kept for admins, then no more
        held = [Raw(agent.socket) for _ in range(3 + ADMIN_RESERVED)]
        try:
            assert held[0].call("ping") == "pong"
            assert held[-1].call("ping") == "pong"
            with Raw(agent.socket) as extra:
                msg = extra.read()
                assert msg == {
                    "id": None,
                    "error": {
                        "code": "busy",
                        "message": "too many connections (limit 3, and 2 kept for admins)",
                    },
                }
                assert extra.read() is None
            # idle connections are closed after idle_timeout (the sweep runs every 0.5 s)
            for raw in held:
                assert raw.read() is None
            status = agent.call("status")["control"]
            assert status["idle_closed"] >= 3
            assert status["connections_refused"] >= 1
        finally:
            for raw in held:
                raw.sock.close()


def test_socket_mode_stale_socket_and_cleanup(short_tmp: Path) -> None:
    run = short_tmp / "run"
    run.mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "agentd.sock"))  # bound, never listening: what a killed agentd leaves
    stale.close()
    with Agent(short_tmp, config(short_tmp), argv=TESTPLUGINS) as agent:
        agent.ready()
        st = os.stat(agent.socket)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert "removed a stale control socket" in agent.log()
        assert agent.stop() == 0
    assert not agent.socket.exists()


def test_live_socket_and_non_socket_are_refused(short_tmp: Path) -> None:
    first_base = short_tmp / "a"
    first_base.mkdir()
    with Agent(first_base, config(first_base), argv=TESTPLUGINS) as first:
        first.ready()
        second_base = short_tmp / "b"
        second_base.mkdir()
        # another runtime dir (so the instance lock does not stop it) but the same socket
        control = f'socket = "{first.socket}"'
        second = subprocess.run(
            [
                *TESTPLUGINS,
                "run",
                "--state-dir",
                str(second_base / "s"),
                "--runtime-dir",
                str(second_base / "r"),
                "--config",
                str(_write(second_base, config(second_base, control=control))),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1
        assert f"cannot start: another agentd is listening on {first.socket}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.call("ping") == "pong"  # the first one is untouched
        assert first.stop() == 0
    plain = short_tmp / "plain"
    plain.write_text("not a socket")
    control = f'socket = "{plain}"'
    third_base = short_tmp / "c"
    third_base.mkdir()
    with Agent(third_base, config(third_base, control=control), argv=TESTPLUGINS) as third:
        assert third.proc is not None
        assert third.proc.wait(30) == 1
    assert f"{plain} exists and is not a socket; remove it or set control.socket" in third.log()
    assert plain.read_text() == "not a socket"


def _write(base: Path, text: str) -> Path:
    path = base / "agentd.toml"
    path.write_text(text)
    return path


def test_systemd_socket_activation(short_tmp: Path) -> None:
    path = short_tmp / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    os.chmod(path, 0o600)
    cfg = _write(short_tmp, config(short_tmp))
    fd = listener.fileno()
    # systemd passes the socket as fd 3 with LISTEN_PID set to the service's own pid: a small
    # exec wrapper does the same (the pid survives exec)
    wrapper = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), "
        "LISTEN_FDNAMES='control'); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    )
    cmd = [
        sys.executable,
        "-c",
        wrapper,
        str(fd),
        *TESTPLUGINS[1:],
        "run",
        "--state-dir",
        str(short_tmp / "s"),
        "--runtime-dir",
        str(short_tmp / "r"),
        "--config",
        str(cfg),
        "--log-level",
        "debug",
    ]
    log_path = short_tmp / "log"
    with (
        open(log_path, "wb") as log,
        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,)) as proc,
    ):
        listener.close()  # the daemon has its own copy now
        try:
            with Raw(path) as raw:
                assert raw.call("ping") == "pong"
                assert raw.call("status")["pid"] == proc.pid
            assert not (short_tmp / "r" / "agentd.sock").exists()
            proc.terminate()
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert f"control socket passed by systemd: {path}" in text
    assert path.exists()  # systemd owns it: not removed at shutdown
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # and its mode is left alone


def test_shutdown_answers_requests_in_flight(short_tmp: Path) -> None:
    cfg = config(short_tmp) + "[actuators.slow]\nseconds = 0.5\ntimeout = 5\n"
    with Agent(short_tmp, cfg, argv=TESTPLUGINS) as agent:
        agent.ready()
        wait_ticks(agent, 1)
        with Raw(agent.socket) as raw:
            raw.send(frame({"id": 1, "cmd": "act", "args": {"actuator": "slow", "action": "z"}}))
            time.sleep(0.1)
            agent.signal(signal.SIGTERM)
            msg = raw.read()
            assert msg is not None
            assert msg["id"] == 1
            # the slow action (0.5 s) fits in the stop_control stage: it is answered
            assert msg["result"]["status"] == "ok"
            assert raw.read() is None
        assert agent.proc is not None
        assert agent.proc.wait(20) == 0


def test_client_module_roundtrip(served: Served) -> None:
    from agentd.control.client import Client, RemoteError

    with Client(served.socket) as c:
        ids = c.send_many([("ping", None), ("plugins", None), ("ping", None)])
        results = [c.result(c.wait(i)) for i in reversed(ids)]
        assert results[0] == results[2] == "pong"
        assert {p["name"] for p in results[1]} >= {"system", "log"}
        with pytest.raises(RemoteError) as caught:
            c.call("plugin", {"name": "nope"})
        assert caught.value.code == "not_found"
        assert c.hello().protocol == 1


async def test_watch_streams_typed_events(short_tmp: Path) -> None:
    """The async form of the fixture: a watcher on a real socket gets each tick as a
    `TickReport` and a pause as a `StateEvent`, decoded from the frames the server sent."""
    async with run_server(short_tmp / "run") as served:
        reader, writer = await asyncio.open_unix_connection(str(served.socket))
        frames = FrameBuffer()

        async def next_message() -> Message:
            while (body := frames.next()) is None:
                frames.feed(await asyncio.wait_for(reader.read(65536), 5))
            return msgspec.msgpack.decode(body, type=Message)

        writer.write(encode_frame({"id": 1, "cmd": "watch", "args": {"events": ["tick", "state"]}}))
        reply = await next_message()
        assert reply.id == 1
        assert msgspec.msgpack.decode(reply.result) == {
            "watching": ["state", "tick"],
            "buffer": 1000,
        }
        event = await next_message()
        assert event.event == "tick"
        tick = msgspec.msgpack.decode(event.data, type=TickReport)
        assert tick.tick >= 1
        assert "system" in tick.observation.readings
        assert served.api.pause() is True
        while (event := await next_message()).event == "tick":
            pass
        assert event.event == "state"
        assert msgspec.msgpack.decode(event.data, type=StateEvent) == StateEvent(state="paused")
        writer.close()
        await writer.wait_closed()


async def test_an_oversized_frame_while_the_turn_is_spent_is_answered(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A header announcing a frame over `max_frame` that arrives when the turn's time budget is
    spent (other clients used it: what a loaded machine does) is answered `bad_frame` and the
    connection closed, like any oversized frame. It used to raise out of `data_received` (the
    fuzz test's "Traceback" in the daemon log under load), and the sweeper's frame-deadline
    check raised the same way."""
    async with run_server(short_tmp / "run") as served:
        state = served.server.state
        reader, writer = await asyncio.open_unix_connection(str(served.socket))
        writer.write(encode_frame({"id": 1, "cmd": "ping"}))
        frames = FrameBuffer()
        while (body := frames.next()) is None:
            frames.feed(await asyncio.wait_for(reader.read(65536), 5))
        (conn,) = [c for c in state.connections if not c.closed]
        state.used = 10.0  # the turn is spent: the next bytes wait for the refill
        assert conn.frame_overdue(time.monotonic()) is False
        writer.write((2**31).to_bytes(4, "big"))  # a header announcing 2 GiB
        await writer.drain()
        data = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            data += chunk
        frames.feed(data)
        body = frames.next()
        assert body is not None
        reply = msgspec.msgpack.decode(body, type=Message)
        assert reply.error is not None
        assert reply.error.code == "bad_frame"
        writer.close()
        await writer.wait_closed()
    assert _tracebacks(caplog) == []
