"""agentd/systemd.py on its own and in a daemon run from source: the datagram protocol (paths
and the abstract namespace), failures that must not raise, WATCHDOG_PID, the reload pairing,
and EXTEND_TIMEOUT_USEC when the first tick is far away."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from agentd.loop import LoopSettings, PerceptionLoop
from agentd.systemd import Notifier, ServiceNotifier, notify_address, watchdog_period
from tests.packaging.sdnotify import NotifySocket
from tests.utils import AgentProcess, handle


class Counter:
    def __init__(self) -> None:
        self.n = 0

    async def perceive(self) -> dict[str, float]:
        self.n += 1
        return {"n": float(self.n)}


def test_notify_to_a_path_and_to_the_abstract_namespace(short_tmp: Path) -> None:
    abstract = f"@agentd-test-{uuid.uuid4().hex}"
    for address in (str(short_tmp / "n.sock"), abstract):
        with NotifySocket(address) as sock:
            notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
            assert notifier.send("READY=1", "STATUS=ok")
            msg = sock.wait_for("READY=1", timeout=5)
            notifier.close()
        assert msg.fields == {"READY": "1", "STATUS": "ok"}
        assert msg.pid == os.getpid()
    assert notify_address("@x") == "\0x"
    assert notify_address("relative/path") is None
    assert notify_address("") is None


def test_from_environ_removes_the_variable_for_child_programs() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert notifier.address == "/run/systemd/notify"
    assert env == {"PATH": "/bin"}


def test_a_missing_socket_is_logged_once_and_never_raises(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(short_tmp / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="agentd.systemd"):
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
    notifier.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith(f"cannot notify systemd at {short_tmp / 'gone.sock'}: ")
    assert Notifier(None).send("READY=1") is False  # not under systemd: a no-op


def test_watchdog_period_is_for_this_process_only() -> None:
    me = str(os.getpid())
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_period({}) is None


async def test_ready_after_first_tick_and_reloads_pair_up(short_tmp: Path) -> None:
    with NotifySocket(str(short_tmp / "n.sock")) as sock:
        sd = ServiceNotifier(Notifier(sock.address), describe=lambda: "plugins 1/1 ok")
        loop = PerceptionLoop(
            LoopSettings(interval=0.05),
            sensors={"c": handle("sensor", "c", Counter())},
            policies={},
            actuators={},
            observers=[sd],
        )
        runner = asyncio.create_task(loop.run())
        notify = asyncio.create_task(sd.run(loop))
        try:
            async with asyncio.timeout(10):
                while not (found := [m for m in sock.drain() if "READY=1" in m]):
                    await asyncio.sleep(0.02)
            ready = found[0]
            assert ready.fields["STATUS"].endswith(", plugins 1/1 ok")
            # two overlapping reloads: one RELOADING=1, one READY=1 when both are done
            sd.reloading()
            sd.reloading()
            sd.reloaded([], 1)
            sd.reloaded(["agent.interval: expected a number >= 0.01, got -1"], 1)
            sd.stopping()
            sd.reloading()  # nothing after STOPPING=1
            sent = [m.raw for m in sock.drain()]  # sendto() is synchronous: all are there
        finally:
            loop.stop()
            notify.cancel()
            await asyncio.gather(runner, notify, return_exceptions=True)
            sd.close()
    assert sent[0].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert sent[1].startswith(b"READY=1\nSTATUS=reload refused (agent.interval: expected")
    assert sent[2:] == [b"STOPPING=1\nSTATUS=stopping\n"]


def test_a_far_first_tick_extends_the_start_timeout(short_tmp: Path) -> None:
    """READY=1 waits for the first tick; with a long aligned interval that can be far away,
    so agentd asks systemd for that much more start-up time instead of failing the start."""
    offset = (time.time() + 120) % 3600  # the first tick about two minutes from now
    config = f"[agent]\ninterval = 3600\nalign = true\noffset = {offset}\n[sensors.system]\n"
    with NotifySocket(str(short_tmp / "n.sock")) as sock:
        env = {"NOTIFY_SOCKET": sock.address}
        with AgentProcess(short_tmp, config, env=env) as agent:
            msg = sock.wait_for(lambda m: "EXTEND_TIMEOUT_USEC" in m.fields, timeout=30)
            first_tick_in = (offset - time.time()) % 3600
            assert agent.stop() == 0
        extra = int(msg.fields["EXTEND_TIMEOUT_USEC"]) / 1e6
        assert first_tick_in + 25 < extra < first_tick_in + 35, (extra, first_tick_in)
        sock.drain()
        assert not any("READY=1" in m for m in sock.messages)
        assert any("STOPPING=1" in m for m in sock.messages)


async def test_a_repeated_sigterm_is_one_stop_a_later_one_forces(short_tmp: Path) -> None:
    from agentd.config import loads
    from agentd.daemon import DUPLICATE_SIGNAL_WINDOW, Daemon, DaemonOptions
    from agentd.plugins.registry import default_registry

    daemon = Daemon(
        loads("[sensors.system]\n", default_registry),
        DaemonOptions(state_dir=str(short_tmp / "s"), runtime_dir=str(short_tmp / "r")),
    )
    daemon.handle_exit(signal.SIGTERM)
    daemon.handle_exit(signal.SIGTERM)  # systemd's copy and the bootloader's, together
    assert daemon.exit_code == 0
    assert not daemon._force
    await asyncio.sleep(DUPLICATE_SIGNAL_WINDOW + 0.05)
    daemon.handle_exit(signal.SIGTERM)  # someone asking again: force it
    assert daemon._force
    assert daemon.exit_code == 1
