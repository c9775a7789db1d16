"""Helpers for the control-plane tests: a real agentd subprocess, agentctl as a subprocess, and
a raw socket that speaks frames (to send what agentctl never would)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from tests.utils import AgentProcess, wait_for

AGENTCTL = [sys.executable, "-m", "agentd", "ctl"]

CONFIG = """
[agent]
interval = {interval}
[log]
heartbeat = 0
[store]
enabled = {store}
[control]
{control}
[sensors.system]
[sensors.switch]
fail_file = "{base}/fail"
[policies.cpu]
plugin = "threshold"
metric = "system.cpu.percent"
above = -1.0
for_ticks = 1
cooldown = 3600
params = {{ message = "cpu is warm" }}
[actuators.log]
"""

TESTPLUGINS = [sys.executable, "-m", "tests.testplugins"]


def config(base: Path, interval: float = 0.2, store: bool = False, control: str = "") -> str:
    return CONFIG.format(
        interval=interval, store="true" if store else "false", control=control, base=base
    )


class Agent(AgentProcess):
    """agentd (with the test plugins) whose socket is known."""

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "agentd.sock"

    def ready(self, timeout: float = 20.0) -> Agent:
        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agentd exited early:\n{self.log()[-3000:]}")
            return self.socket.exists() and ctl(self.socket, "ping").returncode == 0

        wait_for(listening, timeout, interval=0.05, what="the control socket")
        return self

    def ctl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return ctl(self.socket, *args, **kw)

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        with Raw(self.socket) as raw:
            return raw.call(cmd, args)


def ctl(sock: Path, *args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTCTL, "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def ctl_json(agent: Agent, *args: str) -> Any:
    proc = agent.ctl("--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


_enc = msgspec.msgpack.Encoder()


def frame(obj: Any) -> bytes:
    body = obj if isinstance(obj, bytes) else _enc.encode(obj)
    return len(body).to_bytes(4, "big") + body


class Raw:
    """A blocking socket that sends raw frames and reads decoded ones."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""
        self.next_id = 0

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> int:
        self.next_id += 1
        self.send(frame({"id": self.next_id, "cmd": cmd, "args": args or {}}))
        return self.next_id

    def read(self) -> dict[str, Any] | None:
        """The next frame, or None when the server closed the connection."""
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    out: dict[str, Any] = msgspec.msgpack.decode(body)
                    return out
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buf += data

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        rid = self.request(cmd, args)
        msg = self.read()
        assert msg is not None, "connection closed"
        assert msg["id"] == rid, msg
        if "error" in msg:
            raise AssertionError(f"{cmd}: {msg['error']}")
        return msg["result"]


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def ticks(agent: Agent) -> int:
    n: int = agent.call("status")["loop"]["ticks"]
    return n


def wait_ticks(agent: Agent, more: int, timeout: float = 10.0) -> int:
    start = ticks(agent)
    return wait_for(lambda: ticks(agent) >= start + more and ticks(agent), timeout)


__all__ = [
    "Agent",
    "Raw",
    "config",
    "ctl",
    "ctl_json",
    "frame",
    "rss_of",
    "ticks",
    "wait_ticks",
]
