"""The ARM64 artifact reads a real Modbus TCP device under qemu-user (issue 16): a pymodbus
server on this host's 127.0.0.1 with known registers, ``agentd test`` of the arm64 binary with
a ``modbus`` sensor reading them (pymodbus is bundled and runs on the emulated aarch64 Python).
The artifact and the arm64 root (for ``QEMU_LD_PREFIX``) are test_startup_arm64.py's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cross.test_startup_arm64 import artifact, sysroot
from tests.packaging.test_frozen_devices import readings
from tests.plugins.modbus_helpers import Device
from tests.plugins.test_modbus import reference

pytestmark = pytest.mark.arm64

__all__ = ["artifact", "sysroot"]  # the fixtures, imported to be found here

#: emulated start plus one tick; the bound only stops a hung run
RUN_BOUND = 180.0


@pytest.mark.timeout(600)
async def test_arm64_agentd_reads_a_modbus_tcp_device(
    artifact: Path, sysroot: Path, tmp_path: Path
) -> None:
    device = Device(unit=3)
    url = await device.start_tcp()
    try:
        await device.set("input", 0, reference(49.75, "float32", "ABCD"))
        await device.set("holding", 20, [0xFF9C])  # -100 as int16
        conf = tmp_path / "meter.toml"
        conf.write_text(
            f'[sensors.meter]\nplugin = "modbus"\nurl = "{url}"\nunit = 3\n'
            "request_timeout = 5.0\nconnect_timeout = 5.0\ntimeout = 10.0\n"
            "registers = [\n"
            '  { name = "frequency", table = "input", address = 0, type = "float32" },\n'
            '  { name = "offset", address = 20, type = "int16", scale = 0.5 },\n]\n'
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
        env["QEMU_LD_PREFIX"] = str(sysroot)
        proc = await asyncio.create_subprocess_exec(
            str(artifact),
            "test",
            "--config",
            str(conf),
            "--ticks",
            "1",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_BOUND)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text
        assert readings(text, "meter") == {"frequency": "49.75", "offset": "-50"}
        assert (4, 0, 2) in device.reads  # over the wire, one request for the float32
        assert "Traceback" not in text
    finally:
        await device.stop()
