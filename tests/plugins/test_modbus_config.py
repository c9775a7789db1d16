"""The `modbus` config is checked when it is loaded: a bad URL, a register that does not fit
its type or the address space, overlapping registers, a duplicate name, a read-only table for
an actuator, an unknown action in a policy are each one line from `agentd check-config`; and
pymodbus is not imported until a modbus instance is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BAD = [
    ('url = "http://x"', "sensors.m: `url` 'http://x' is neither tcp://HOST[:PORT] nor"),
    ('url = "tcp://:502"', "sensors.m: `url` 'tcp://:502' has no host"),
    ('url = "tcp://h:99999"', "sensors.m: `url` 'tcp://h:99999' is not a valid URL"),
    ('url = "rtu:///dev/ttyS0?baud=12345"', "baud=12345 is not a standard rate"),
    ('url = "rtu:///dev/ttyS0?parity=X"', "parity='X' is not N, E or O"),
    ('url = "rtu:///dev/ttyS0?speed=9600"', "unknown setting 'speed'"),
    ('url = "rtu://dev/ttyS0"', "an rtu URL names a serial device"),
    ("unit = 256", "sensors.m.unit: expected an integer <= 255, got 256"),
    (
        'registers = [{ name = "a", address = 70000 }]',
        "sensors.m.registers[0].address: expected an integer <= 65535, got 70000",
    ),
    (
        'registers = [{ name = "a", address = 65535, type = "float32" }]',
        "sensors.m.registers[0]: 'a': a float32 at address 65535 ends past 65535",
    ),
    (
        'registers = [{ name = "a", address = 0 }, { name = "a", address = 1 }]',
        "sensors.m: `registers[1]`: the name 'a' is registers[0]'s",
    ),
    (
        'registers = [{ name = "a", address = 0, type = "float32" }, { name = "b", address = 1 }]',
        "sensors.m: `registers[1]` 'b' (holding 1..1) overlaps registers[0] 'a' (0..1)",
    ),
    (
        'registers = [{ name = "a", table = "coil", address = 0, type = "int16" }]',
        "sensors.m.registers[0]: 'a': the coil table holds single bits: type must be bool",
    ),
    (
        'registers = [{ name = "a", address = 0, type = "int8" }]',
        "sensors.m.registers[0].type: Invalid enum value 'int8'",
    ),
    (
        'registers = [{ name = "a", address = 0, order = "ABDC" }]',
        "sensors.m.registers[0].order: Invalid enum value 'ABDC'",
    ),
    ("registers = []", "sensors.m.registers: expected an array of length >= 1"),
    ("max_registers = 126", "sensors.m.max_registers: expected an integer <= 125, got 126"),
    (
        'unit = 0\nurl = "rtu:///dev/ttyS0"',
        "sensors.m: `unit` 0: a unit on a serial line is 1..247",
    ),
    ("request_timeout = 0", "sensors.m.request_timeout: expected a number > 0"),
]


@pytest.mark.parametrize(("line", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_are_one_line_from_check_config(tmp_path: Path, line: str, error: str) -> None:
    key = line.split(" = ", 1)[0]
    table = {
        "url": 'url = "tcp://127.0.0.1:5020"',
        "registers": 'registers = [{ name = "v", address = 0 }]',
    }
    table[key] = line
    if "\n" in line:  # the unit's bounds depend on the URL: the line sets both
        del table["url"]
    conf = tmp_path / "agentd.toml"
    conf.write_text('[sensors.m]\nplugin = "modbus"\n' + "\n".join(table.values()) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert error in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("unit", [0, 255])
def test_a_tcp_unit_may_be_0_or_255(tmp_path: Path, unit: int) -> None:
    conf = tmp_path / "agentd.toml"
    conf.write_text(
        f'[sensors.m]\nplugin = "modbus"\nurl = "tcp://127.0.0.1:5020"\nunit = {unit}\n'
        'registers = [{ name = "v", address = 0 }]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")


def test_an_actuator_on_a_read_only_table_and_a_policy_typo_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "agentd.toml"
    conf.write_text(
        '[actuators.plc]\nplugin = "modbus"\nurl = "tcp://127.0.0.1:5020"\n'
        'registers = [{ name = "v", table = "input", address = 0 }]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stderr.strip() == (
        "actuators.plc: `registers[0]` 'v': the input table is read-only "
        "(an actuator writes holding registers and coils)"
    )
    conf.write_text(
        "[sensors.system]\n"
        '[actuators.plc]\nplugin = "modbus"\nurl = "tcp://127.0.0.1:5020"\n'
        'registers = [{ name = "pump", table = "coil", address = 0 }]\n'
        '[policies.hot]\nplugin = "threshold"\nmetric = "system.cpu.percent"\nabove = 90.0\n'
        'actuator = "plc"\naction = "pomp"\nparams = { to = true }\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "policies.hot.action: actuator 'plc' has no action 'pomp' (did you mean 'pump'?)" in (
        proc.stderr
    )


def test_pymodbus_is_not_imported_by_the_registry() -> None:
    code = (
        "import sys; import agentd.plugins.builtin; "
        "from agentd.plugins.registry import default_registry; default_registry(); "
        "import agentd.plugins.builtin.modbus as m; "
        "bad = [n for n in ('pymodbus', 'serial') if n in sys.modules]; assert not bad, bad; "
        "m.build_sensor(m.msgspec.convert({'url': 'tcp://h', 'registers': [{'name': 'a', "
        "'address': 0}]}, m.ModbusSensorConfig)); assert 'pymodbus' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
