"""Built-in sensors against real files, real subprocesses, real interfaces and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest

from agentd.plugins.builtin import command, file_sensor, net, process

PY = sys.executable


def build(spec_module, **raw):  # type: ignore[no-untyped-def]
    config = msgspec.convert(raw, spec_module.SPEC.config_type)
    return spec_module.SPEC.factory(config)


async def test_file_sensor_thermal_zone_style(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.write_text("48312\n")
    s = build(file_sensor, path=str(temp), scale=0.001, metric="celsius")
    await s.start()
    assert await s.perceive() == {"celsius": pytest.approx(48.312)}
    temp.write_text("51000\n")
    assert await s.perceive() == {"celsius": pytest.approx(51.0)}


async def test_file_sensor_w1_slave_with_regex(tmp_path: Path) -> None:
    w1 = tmp_path / "w1_slave"
    w1.write_text("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n")
    s = build(file_sensor, path=str(w1), regex=r"t=(-?\d+)", scale=0.001)
    assert await s.perceive() == {"value": pytest.approx(23.125)}
    w1.write_text("garbage\n")
    with pytest.raises(ValueError, match="does not match"):
        await s.perceive()


async def test_file_sensor_line_and_bool(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("mode: auto\nled: on\n")
    line = build(file_sensor, path=str(f), parse="line", line=0, regex=r"mode: (?P<value>\w+)")
    assert await line.perceive() == {"value": "auto"}
    on = build(file_sensor, path=str(f), parse="bool", line=-1, regex=r"led: (\w+)")
    assert await on.perceive() == {"value": True}


async def test_file_sensor_missing_device_fails_start(tmp_path: Path) -> None:
    s = build(file_sensor, path=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        await s.start()


async def test_command_sensor_number_json_lines() -> None:
    n = build(command, argv=[PY, "-c", "print('load 0.75')"], metric="load")
    assert await n.perceive() == {"load": 0.75}
    j = build(
        command,
        argv=[PY, "-c", "import json; print(json.dumps({'a': 1, 'b': {'c': 2.5, 'd': 'x'}}))"],
        parse="json",
    )
    assert await j.perceive() == {"a": 1, "b.c": 2.5, "b.d": "x"}
    lines = build(command, argv=[PY, "-c", "print('rx 10\\ntx=20\\nstate up')"], parse="lines")
    assert await lines.perceive() == {"rx": 10.0, "tx": 20.0, "state": "up"}


async def test_command_sensor_nonzero_exit_and_bad_output_fail() -> None:
    bad = build(command, argv=[PY, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    with pytest.raises(RuntimeError, match="exited with status 3: boom"):
        await bad.perceive()
    nonum = build(command, argv=[PY, "-c", "print('n/a')"])
    with pytest.raises(ValueError, match="no number"):
        await nonum.perceive()


async def test_command_sensor_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    # the child starts a grandchild that would outlive a plain kill of the child
    script = (
        "import subprocess, sys, time;"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(marker)!r}, 'w').write(str(p.pid));"
        "time.sleep(60)"
    )
    s = build(command, argv=[PY, "-c", script], run_timeout=1.0)
    with pytest.raises(TimeoutError):
        await s.perceive()
    grandchild = int(marker.read_text())
    # killed with its group; it may linger as a zombie of init for a moment at most
    for _ in range(100):
        try:
            os.kill(grandchild, 0)
            stat = Path(f"/proc/{grandchild}/stat").read_text().split()[2]
        except (ProcessLookupError, FileNotFoundError):
            break
        if stat == "Z":
            break
        import time

        time.sleep(0.02)
    else:
        pytest.fail(f"grandchild {grandchild} still running after the timeout")


async def test_environment_is_scrubbed_and_limits_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_SECRET", "hunter2")
    monkeypatch.setenv("KEEP_ME", "yes")
    probe = (
        "import os, json, resource;"
        "print(json.dumps({'secret': os.environ.get('AGENTD_SECRET', ''),"
        " 'keep': os.environ.get('KEEP_ME', ''), 'fixed': os.environ.get('FIXED', ''),"
        " 'path': os.environ['PATH'],"
        " 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)[0],"
        " 'core': resource.getrlimit(resource.RLIMIT_CORE)[0]}))"
    )
    s = build(
        command,
        argv=[PY, "-c", probe],
        parse="json",
        env_passthrough=["KEEP_ME"],
        env={"FIXED": "1"},
        limits={"open_files": 37},
    )
    got = await s.perceive()
    assert got["secret"] == ""
    assert (got["keep"], got["fixed"]) == ("yes", "1")
    assert got["path"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert (got["nofile"], got["core"]) == (37, 0)


async def test_frozen_binary_restores_the_original_loader_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PyInstaller's bootloader prepends its bundle to LD_LIBRARY_PATH and keeps the user's
    value in LD_LIBRARY_PATH_ORIG; a child must get the original."""
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp/_MEIabc:/opt/lib")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/opt/lib")
    probe = "import os; print('lib ' + os.environ.get('LD_LIBRARY_PATH', '-'))"
    s = build(command, argv=[PY, "-c", probe], parse="lines", env_passthrough=["LD_LIBRARY_PATH"])
    assert await s.perceive() == {"lib": "/opt/lib"}
    # no _ORIG (there was none, or the runtime hook restored it): the bundle's entries go
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG")
    monkeypatch.setattr(sys, "_MEIPASS", "/tmp/_MEIabc", raising=False)
    s = build(command, argv=[PY, "-c", probe], parse="lines", env_passthrough=["LD_LIBRARY_PATH"])
    assert await s.perceive() == {"lib": "/opt/lib"}
    monkeypatch.setenv("LD_LIBRARY_PATH", "/tmp/_MEIabc")
    s = build(command, argv=[PY, "-c", probe], parse="lines", env_passthrough=["LD_LIBRARY_PATH"])
    assert await s.perceive() == {"lib": "-"}


async def test_command_output_is_truncated() -> None:
    s = build(command, argv=[PY, "-c", "print('7' + 'x' * 100000)"], max_output=64)
    assert await s.perceive() == {"value": 7.0}
    j = build(
        command, argv=[PY, "-c", "print('{\"a\": ' + '1' * 200 + '}')"], parse="json", max_output=64
    )
    with pytest.raises(ValueError, match="longer than max_output"):
        await j.perceive()


async def test_net_sensor_reads_loopback_and_rates() -> None:
    s = build(net, interfaces=["lo"])
    first = await s.perceive()
    assert first["lo.up"] is True
    assert isinstance(first["lo.bytes_recv"], int)
    assert "lo.bytes_recv_per_s" not in first
    second = await s.perceive()
    assert second["lo.bytes_recv_per_s"] >= 0
    missing = build(net, interfaces=["nosuch0"])
    with pytest.raises(OSError, match="no network interface named 'nosuch0'"):
        await missing.perceive()


async def test_process_sensor_sees_a_real_process_come_and_go() -> None:
    token = f"agentd-test-{uuid.uuid4().hex[:8]}"
    s = build(
        process, processes={"worker": {"cmdline": token}, "init": {"pidfile": "/nonexistent"}}
    )
    assert (await s.perceive())["worker.alive"] is False
    proc = subprocess.Popen([PY, "-c", "import time, sys; time.sleep(60)", token])
    try:
        got = await s.perceive()
        assert (got["worker.alive"], got["worker.count"]) == (True, 1)
        assert got["worker.rss"] > 1_000_000
        assert got["worker.cpu_percent"] >= 0
        assert got["init.alive"] is False
    finally:
        proc.kill()
        proc.wait()
    assert (await s.perceive())["worker.alive"] is False
