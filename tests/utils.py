"""Helpers for tests that drive a real agentd: a subprocess with its own state and runtime
directories (short paths: Linux caps socket paths at 108 bytes) and its log in a file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agentd.plugins.base import PluginSpec
from agentd.plugins.handle import PluginHandle
from agentd.plugins.kinds import BY_KIND

__all__ = ["AgentProcess", "short_tmpdir", "wait_for"]

AGENTD = [sys.executable, "-m", "agentd"]


@contextlib.contextmanager
def short_tmpdir(prefix: str = "agt") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class AgentProcess:
    """``agentd run`` as a real subprocess. Use as a context manager; it is killed on exit if
    the test did not stop it."""

    def __init__(
        self,
        base: Path,
        config: str | None = None,
        *args: str,
        log_level: str = "debug",
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.base = base
        self.pass_fds = pass_fds
        self.state_dir = base / "state"
        self.runtime_dir = base / "run"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = base / "agentd.toml"
            self.config_path.write_text(config)
        self.log_path = base / "agentd.log"
        cmd = [
            *(argv or AGENTD),
            "run",
            "--state-dir",
            str(self.state_dir),
            "--runtime-dir",
            str(self.runtime_dir),
            "--log-level",
            log_level,
            *args,
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        self.cmd = cmd
        inherited = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        self.env = {**inherited, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            pass_fds=self.pass_fds,
        )
        return self

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            # its own session: also what outlives it (the frozen binary's Python child when the
            # bootloader was killed, programs started by plugins)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> list[re.Match[str]]:
        rx = re.compile(pattern)

        def found() -> list[re.Match[str]] | None:
            matches = list(rx.finditer(self.log()))
            if len(matches) >= count:
                return matches
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"agentd exited ({self.proc.returncode}) before logging {pattern!r}:\n"
                    + self.log()[-3000:]
                )
            return None

        return wait_for(found, timeout, what=f"log line {pattern!r}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def handle(
    kind: str,
    name: str,
    obj: object,
    *,
    config_type=None,
    timeout: float | None = None,
    interval: float | None = None,
    actions=None,
    **common: object,
) -> PluginHandle:
    """A PluginHandle around a test plugin object, as the daemon would build it."""
    import msgspec

    from agentd.config import (
        ActuatorCommon,
        ActuatorInstance,
        PolicyCommon,
        PolicyInstance,
        SensorCommon,
        SensorInstance,
    )

    class Empty(msgspec.Struct):
        pass

    if kind == "sensor":
        inst = SensorInstance(
            name=name,
            plugin=name,
            common=SensorCommon(timeout=timeout, interval=interval, **common),
            config=Empty(),
            raw={},
        )
    elif kind == "policy":
        inst = PolicyInstance(
            name=name, plugin=name, common=PolicyCommon(timeout=timeout), config=Empty(), raw={}
        )
    else:
        inst = ActuatorInstance(
            name=name,
            plugin=name,
            common=ActuatorCommon(timeout=timeout, **common),
            config=Empty(),
            raw={},
        )
    spec = PluginSpec(
        name=name,
        kind=kind,
        factory=lambda c: obj,
        config_type=config_type or Empty,
        actions=actions or ({"*": Empty} if kind == "actuator" else {}),
    )
    return BY_KIND[kind].runner(inst, spec, obj)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (and 127.0.0.1) made by the openssl CLI:
    returns (key, cert)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return key, cert
