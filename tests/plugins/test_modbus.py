"""The `modbus` sensor and actuator against a real pymodbus TCP server started by the test:
every type and byte/word order round-trips (written with the server's datastore and read
through the sensor; written through the actuator and read from the datastore), reads are
planned into few requests, an out-of-range write is refused before any request, one
connection serves a sensor and an actuator, and a dead device fails fast and backs off
(config errors: test_modbus_config.py)."""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pymodbus.client import AsyncModbusTcpClient

from agentd.config_refs import declared_metrics
from agentd.devices.modbus import POOL, ModbusActuator, ModbusError, ModbusSensor
from agentd.devices.modbus_codec import decode, encode, plan
from agentd.model import Action
from agentd.plugins.builtin.modbus import ModbusActuatorConfig, ModbusSensorConfig
from agentd.plugins.paramschema import declared_action_schemas
from tests.plugins.modbus_helpers import Device

DT = AsyncModbusTcpClient.DATATYPE
PYMODBUS_TYPES = {
    "int16": DT.INT16,
    "uint16": DT.UINT16,
    "int32": DT.INT32,
    "uint32": DT.UINT32,
    "float32": DT.FLOAT32,
    "float64": DT.FLOAT64,
}
FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
#: a value per type whose bytes all differ, so any order mix-up shows
VALUES: dict[str, int | float] = {
    "int16": -12_345,
    "uint16": 0xBEEF,
    "int32": -123_456_789,
    "uint32": 0xDEADBEEF,
    "float32": 229.5,
    "float64": -1234.5678125,
}


def reference(value: int | float, dtype: str, order: str) -> list[int]:
    """The registers a device sends, computed without our codec: pymodbus's converter for the
    word orders, a byte swap per register on top of it for BADC, struct's little-endian for
    DCBA."""
    if order == "DCBA":
        data = struct.pack("<" + FORMATS[dtype], value)
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    word_order = "little" if order == "CDAB" else "big"
    regs = AsyncModbusTcpClient.convert_to_registers(
        value, PYMODBUS_TYPES[dtype], word_order=word_order
    )
    if order == "BADC":
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return regs


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = Device(unit=3, size=2048)
    await dev.start_tcp()
    try:
        yield dev
    finally:
        await dev.stop()


def sensor_config(url: str, registers: list[dict[str, Any]], **kw: Any) -> ModbusSensorConfig:
    return msgspec.convert({"url": url, "registers": registers, **kw}, ModbusSensorConfig)


def actuator_config(url: str, registers: list[dict[str, Any]], **kw: Any) -> ModbusActuatorConfig:
    return msgspec.convert({"url": url, "registers": registers, **kw}, ModbusActuatorConfig)


def type_map() -> list[dict[str, Any]]:
    """One register per type and order, each at its own address (4 registers apart)."""
    out = []
    for i, (dtype, order) in enumerate((d, o) for d in VALUES for o in ORDERS):
        out.append({"name": f"{dtype}_{order}", "address": 4 * i, "type": dtype, "order": order})
    return out


@pytest.mark.parametrize("dtype", sorted(VALUES))
@pytest.mark.parametrize("order", ORDERS)
def test_codec_agrees_with_the_reference(dtype: str, order: str) -> None:
    words = reference(VALUES[dtype], dtype, order)
    assert encode(VALUES[dtype], dtype, order) == words  # type: ignore[arg-type]
    assert decode(words, dtype, order) == VALUES[dtype]  # type: ignore[arg-type]


async def round_trip(dev: Device, url: str, table: str = "holding", **kw: Any) -> None:
    """Every type and order: datastore -> sensor, then actuator -> datastore."""
    regs = [{**r, "table": table} for r in type_map()]
    for reg in regs:
        await dev.set(
            table, reg["address"], reference(VALUES[reg["type"]], reg["type"], reg["order"])
        )
    await dev.set("coil", 500, [True, False, True])
    await dev.set("discrete", 600, [False, True])
    bits = [
        {"name": "coil_a", "table": "coil", "address": 500},
        {"name": "coil_b", "table": "coil", "address": 501},
        {"name": "coil_c", "table": "coil", "address": 502},
        {"name": "di_a", "table": "discrete", "address": 600},
        {"name": "di_b", "table": "discrete", "address": 601},
    ]
    sensor = ModbusSensor(sensor_config(url, regs + bits, unit=dev.unit, **kw))
    await sensor.start()
    try:
        readings = await sensor.perceive()
        expected = {r["name"]: VALUES[r["type"]] for r in regs}
        expected |= {"coil_a": True, "coil_b": False, "coil_c": True, "di_a": False, "di_b": True}
        assert readings == expected
        assert all(type(readings[r["name"]]) is type(VALUES[r["type"]]) for r in regs)
        if table != "holding":
            return
        # the actuator writes other values; the datastore holds what the device would send
        actuator = ModbusActuator(actuator_config(url, regs + bits[:3], unit=dev.unit, **kw))
        await actuator.start()
        try:
            new = {"int16": 321, "uint16": 0x1234, "int32": 987_654, "uint32": 0x0102_0304}
            new |= {"float32": -0.15625, "float64": 6.02214076e23}
            for reg in regs:
                value = new[reg["type"]]
                await actuator.act(Action(actuator="a", name=reg["name"], params={"to": value}))
                width = len(reference(value, reg["type"], reg["order"]))
                got = await dev.get("holding", reg["address"], width)
                assert got == reference(value, reg["type"], reg["order"]), reg
            await actuator.act(Action(actuator="a", name="coil_b", params={"to": True}))
            await actuator.act(Action(actuator="a", name="coil_a", params={"to": False}))
            assert await dev.get("coil", 500, 3) == [False, True, True]
            again = await sensor.perceive()
            assert {r["name"]: again[r["name"]] for r in regs} == {
                r["name"]: new[r["type"]] for r in regs
            }
            assert again["coil_a"] is False
            assert again["coil_b"] is True
            assert again["float64_DCBA"] == 6.02214076e23
        finally:
            await actuator.stop()
    finally:
        await sensor.stop()


async def test_every_type_and_order_round_trips_over_tcp(device: Device) -> None:
    await round_trip(device, device.url)
    await round_trip(device, device.url, table="input")
    assert POOL.links() == {}


async def test_scale_offset_and_units(device: Device) -> None:
    await device.set("input", 0, [2315, 0xFFFF, 40, 0x0100, 0])
    config = sensor_config(
        device.url,
        [
            {"name": "volts", "table": "input", "address": 0, "scale": 0.1, "unit": "V"},
            {"name": "delta", "table": "input", "address": 1, "type": "int16", "scale": 0.5},
            {
                "name": "temp",
                "table": "input",
                "address": 2,
                "scale": 1,
                "offset": -40,
                "unit": "C",
            },
            {"name": "on", "table": "input", "address": 3, "type": "bool"},
            {"name": "off", "table": "input", "address": 4, "type": "bool"},
        ],
        unit=device.unit,
    )
    assert declared_metrics(config) == {"volts": "V", "delta": "", "temp": "C", "on": "", "off": ""}
    sensor = ModbusSensor(config)
    try:
        readings = await sensor.perceive()
    finally:
        await sensor.stop()
    assert readings == {
        "volts": pytest.approx(231.5),
        "delta": -0.5,
        "temp": 0.0,
        "on": True,  # a register read as bool: non-zero
        "off": False,
    }
    assert isinstance(readings["temp"], float)


async def test_reads_are_planned_into_few_requests(device: Device) -> None:
    # 100 uint16 registers at 0..99 and a float32 at 130: one read of 100, then a separate one
    # (the gap of 30 is over the default 8); 130 coils: one read; 200 more registers: two
    regs: list[dict[str, Any]] = [{"name": f"r{i}", "address": i} for i in range(100)]
    regs.append({"name": "far", "address": 130, "type": "float32"})
    regs += [{"name": f"c{i}", "table": "coil", "address": i} for i in range(130)]
    regs += [{"name": f"h{i}", "address": 1000 + i} for i in range(200)]
    for i in range(100):
        await device.set("holding", i, [i * 7])
    sensor = ModbusSensor(sensor_config(device.url, regs, unit=device.unit))
    try:
        readings = await sensor.perceive()
    finally:
        await sensor.stop()
    assert [readings[f"r{i}"] for i in range(100)] == [i * 7 for i in range(100)]
    assert sorted(device.reads) == [
        (1, 0, 130),
        (3, 0, 100),
        (3, 130, 2),
        (3, 1000, 125),
        (3, 1125, 75),
    ]
    # the per-request maximum and the gap are the config's
    small = plan(
        (r.span() for r in sensor_config(device.url, regs).registers),
        max_registers=50,
        max_bits=100,
        gap=40,
    )
    assert [(r.table, r.address, r.count) for r in small] == [
        ("holding", 0, 50),
        ("holding", 50, 50),
        ("holding", 130, 2),
        *(("holding", 1000 + 50 * k, 50) for k in range(4)),
        ("coil", 0, 100),
        ("coil", 100, 30),
    ]


async def test_a_nan_register_is_left_out_and_said_once(
    device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    await device.set("holding", 0, [0x7FC0, 0, 0x4120, 0])  # NaN, then 10.0
    config = sensor_config(
        device.url,
        [
            {"name": "nan", "address": 0, "type": "float32"},
            {"name": "ten", "address": 2, "type": "float32"},
        ],
        unit=device.unit,
    )
    sensor = ModbusSensor(config)
    try:
        assert await sensor.perceive() == {"ten": 10.0}
        assert await sensor.perceive() == {"ten": 10.0}
        await device.set("holding", 0, [0x4000, 0])
        assert await sensor.perceive() == {"nan": 2.0, "ten": 10.0}
    finally:
        await sensor.stop()
    said = [r.getMessage() for r in caplog.records if "'nan' reads nan" in r.getMessage()]
    assert len(said) == 1, said


async def test_an_exception_answer_is_one_line_naming_the_device(device: Device) -> None:
    sensor = ModbusSensor(
        sensor_config(device.url, [{"name": "past_the_end", "address": device.size + 10}], unit=3)
    )
    try:
        with pytest.raises(ModbusError) as err:
            await sensor.perceive()
    finally:
        await sensor.stop()
    assert str(err.value) == (
        f"{device.url} unit 3: read holding 2058..2058: exception 2 (illegal data address)"
    )


async def test_the_actuator_refuses_bad_values_before_any_request(device: Device) -> None:
    config = actuator_config(
        device.url,
        [
            {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "min": 5, "max": 60},
            {"name": "speed", "address": 11, "type": "uint16"},
            {"name": "power", "address": 12, "type": "float32", "unit": "kW"},
            {"name": "pump", "table": "coil", "address": 0},
        ],
        unit=device.unit,
    )
    schemas = declared_action_schemas(config)
    assert schemas is not None
    assert schemas["setpoint"]["properties"]["to"] == {
        "type": "number",
        "minimum": 5,
        "maximum": 60,
    }
    assert schemas["speed"]["properties"]["to"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 65535,
    }
    assert schemas["pump"]["properties"]["to"] == {"type": "boolean"}
    assert config.offers() == ["setpoint", "speed", "power", "pump"]
    actuator = ModbusActuator(config)
    await actuator.start()
    bad = {
        ("setpoint", 60.5): "params.to: 60.5 is greater than the maximum of 60",
        ("setpoint", 4): "params.to: 4 is less than the minimum of 5",
        ("setpoint", 21.55): (
            "params.to: 21.55 is not a whole number of steps of 0.1 (int16 register)"
        ),
        ("speed", 65536): "params.to: 65536 is greater than the maximum of 65535",
        ("speed", -1): "params.to: -1 is less than the minimum of 0",
        ("speed", 1.5): "params.to: 1.5 is not of type 'integer'",
        ("speed", "7"): "params.to: '7' is not of type 'integer'",
        ("power", 1e39): "params.to: 1e+39 is greater than the maximum of 3.4028234663852886e+38",
        ("pump", 1): "params.to: 1 is not of type 'boolean'",
        ("nope", 1): "no register 'nope' (registers: setpoint, speed, power, pump)",
    }
    try:
        for (name, value), why in bad.items():
            action = Action(actuator="plc", name=name, params={"to": value})
            assert actuator.validate(action) == why
            with pytest.raises(ModbusError, match="^" + re.escape(why)):
                await actuator.act(action)
        missing = actuator.validate(Action(actuator="plc", name="speed", params={"value": 3}))
        assert missing == "params: 'to' is a required property"
        assert device.writes == []
        assert device.reads == []  # not a single request reached the device
        ok = Action(actuator="plc", name="setpoint", params={"to": 21.5, "metric": "x.y"})
        assert actuator.validate(ok) is None
        reply = await actuator.act(ok)
        assert reply.output == {"register": "setpoint", "address": 10, "to": 21.5, "raw": 215}
        assert device.writes == [(6, 10, [215])]
    finally:
        await actuator.stop()


async def test_write_multiple_uses_function_16(device: Device) -> None:
    config = actuator_config(
        device.url, [{"name": "speed", "address": 11}], unit=device.unit, write_multiple=True
    )
    actuator = ModbusActuator(config)
    try:
        await actuator.act(Action(actuator="a", name="speed", params={"to": 1500}))
    finally:
        await actuator.stop()
    assert device.writes == [(16, 11, [1500])]


async def test_a_sensor_and_an_actuator_share_one_connection(device: Device) -> None:
    sensor = ModbusSensor(sensor_config(device.url, [{"name": "v", "address": 0}], unit=3))
    actuator = ModbusActuator(actuator_config(device.url, [{"name": "v", "address": 0}], unit=3))
    await sensor.start()
    await actuator.start()
    key = device.url
    assert POOL.links() == {key: 2}
    try:
        results = await asyncio.gather(
            *(actuator.act(Action(actuator="a", name="v", params={"to": i})) for i in range(5)),
            *(sensor.perceive() for _ in range(5)),
        )
        assert all(isinstance(r["v"], int) for r in results[5:])  # type: ignore[index]
        assert sensor.link is actuator.link
        assert device.server is not None
        assert len(device.server.active_connections) == 1
    finally:
        await sensor.stop()
        assert POOL.links() == {key: 1}
        await actuator.stop()
    assert POOL.links() == {}


async def test_a_failed_request_on_an_old_connection_leaves_the_new_one_open(
    device: Device,
) -> None:
    # two users of one link: A's request fails and A reopens; B's request, still on the old
    # connection, fails after that: B must not close A's new connection
    sensor = ModbusSensor(sensor_config(device.url, [{"name": "v", "address": 0}], unit=3))
    try:
        await sensor.perceive()
        link = sensor.link
        assert link is not None
        old = link.client
        link.drop(old)
        await sensor.perceive()
        new = link.client
        assert new is not None
        assert new is not old
        link.drop(old)
        assert link.client is new
        assert new.connected
        assert await sensor.perceive() == {"v": 0}
    finally:
        await sensor.stop()


async def test_one_serial_port_with_two_line_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ttyX"
    first = ModbusSensor(sensor_config(f"rtu://{path}?baud=9600", [{"name": "a", "address": 0}]))
    second = ModbusSensor(sensor_config(f"rtu://{path}?baud=19200", [{"name": "a", "address": 0}]))
    await first.start()
    try:
        with pytest.raises(ModbusError, match=r"is open at baud=9600 .* asks for baud=19200"):
            await second.start()
    finally:
        await first.stop()
    assert POOL.links() == {}


async def test_a_dead_device_fails_fast_and_backs_off(device: Device) -> None:
    url = device.url
    await device.stop()
    config = sensor_config(
        url, [{"name": "v", "address": 0}], unit=3, reconnect_min=0.3, reconnect_max=0.6
    )
    sensor = ModbusSensor(config)
    try:
        with pytest.raises(ModbusError, match=r"cannot connect to 127\.0\.0\.1:\d+$"):
            await sensor.perceive()
        # within the back-off a call fails at once, without a connect attempt
        with pytest.raises(ModbusError, match=r"\(next attempt in 0\.[0-3]s\)$"):
            await sensor.perceive()
        await asyncio.sleep(0.35)
        with pytest.raises(ModbusError, match="cannot connect"):
            await sensor.perceive()
        assert sensor.link is not None
        assert sensor.link.delay == 0.6  # doubled, at the cap
        # the device comes back on the same port: the next attempt after the back-off reads
        port = int(url.rsplit(":", 1)[1])
        await device.start_tcp(port)
        await device.set("holding", 0, [42])
        await asyncio.sleep(0.65)
        assert await sensor.perceive() == {"v": 42}
        assert sensor.link.delay == 0.0
    finally:
        await sensor.stop()


async def test_a_device_that_does_not_answer_times_out_within_request_timeout() -> None:
    # a TCP listener that accepts and never answers: a hung gateway
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sensor = ModbusSensor(
        sensor_config(f"tcp://127.0.0.1:{port}", [{"name": "v", "address": 0}], request_timeout=0.2)
    )
    try:
        started = time.monotonic()
        with pytest.raises(ModbusError, match=r"read holding 0\.\.0: no answer within 0\.2s$"):
            await sensor.perceive()
        assert time.monotonic() - started < 1.5
        assert sensor.link is not None
        assert sensor.link.client is None
    finally:
        await sensor.stop()
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def test_values_keep_their_type() -> None:
    assert decode([0x4148, 0], "float32", "ABCD") == 12.5
    assert decode([1], "bool", "ABCD") == 1
    assert math.isnan(float(decode([0x7FC0, 0], "float32", "ABCD")))
