"""Modbus RTU over a real pseudo-terminal pair (``socat -d -d pty,raw,echo=0 pty,raw,echo=0``)
with a pymodbus serial server on one end and the `modbus` sensor and actuator on the other:
every type and order round-trips, two units share the line, and a device that stops
answering, or a line that goes away (socat killed), fails its reads in one line within the
deadline, never hanging."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentd.devices.modbus import POOL, ModbusActuator, ModbusError, ModbusSensor
from agentd.model import Action
from tests.plugins.modbus_helpers import Device, PtyPair
from tests.plugins.test_modbus import actuator_config, round_trip, sensor_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[PtyPair, Device]]:
    pair = PtyPair(tmp_path).start()
    dev = Device(unit=7, size=2048)
    try:
        # parity stays N: Linux ptys refuse PARENB in tcsetattr (EINVAL)
        await dev.start_rtu(pair.b, baud=19200)
        yield pair, dev
    finally:
        await dev.stop()
        pair.kill()


def rtu(pair: PtyPair) -> str:
    return f"rtu://{pair.a}?baud=19200&parity=N&stop=1&bytesize=8"


async def test_every_type_and_order_round_trips_over_rtu(line: tuple[PtyPair, Device]) -> None:
    pair, dev = line
    await round_trip(dev, rtu(pair), request_timeout=2.0)
    await round_trip(dev, rtu(pair), table="input", request_timeout=2.0)
    assert POOL.links() == {}


async def test_a_sensor_and_an_actuator_share_the_serial_port(
    line: tuple[PtyPair, Device],
) -> None:
    pair, dev = line
    url = rtu(pair)
    sensor = ModbusSensor(sensor_config(url, [{"name": "v", "address": 5}], unit=7))
    actuator = ModbusActuator(actuator_config(url, [{"name": "v", "address": 5}], unit=7))
    await sensor.start()
    await actuator.start()
    try:
        # the port is opened exclusively: a second open of it would fail, so sharing is the
        # only way both work at once
        writes = [actuator.act(Action(actuator="a", name="v", params={"to": i})) for i in range(4)]
        reads = [sensor.perceive() for _ in range(4)]
        await asyncio.gather(*writes, *reads)
        # keyed by the port's real path (the pty behind the socat link)
        assert POOL.links() == {f"rtu://{os.path.realpath(pair.a)}": 2}
        assert await sensor.perceive() == {"v": 3}
        assert [w[2] for w in dev.writes] == [[0], [1], [2], [3]]
    finally:
        await sensor.stop()
        await actuator.stop()


async def test_one_port_under_two_names_is_one_link(line: tuple[PtyPair, Device]) -> None:
    pair, dev = line
    alias = Path(pair.a).with_name("by-id-adapter")
    alias.symlink_to(pair.a)
    await dev.set("holding", 0, [11])
    first = ModbusSensor(sensor_config(rtu(pair), [{"name": "v", "address": 0}], unit=7))
    second = ModbusSensor(
        sensor_config(f"rtu://{alias}?baud=19200", [{"name": "v", "address": 0}], unit=7)
    )
    try:
        # a second open of the port would fail (it is opened exclusively)
        assert await first.perceive() == {"v": 11}
        assert await second.perceive() == {"v": 11}
        assert first.link is second.link
        assert list(POOL.links().values()) == [2]
    finally:
        await first.stop()
        await second.stop()
    assert POOL.links() == {}


async def test_a_silent_unit_times_out_and_the_line_still_serves_the_others(
    line: tuple[PtyPair, Device],
) -> None:
    pair, dev = line
    url = rtu(pair)
    await dev.set("holding", 0, [99])
    # unit 7 answers; unit 9 is not on the line: nothing answers it
    dev.silent.add(9)
    alive = ModbusSensor(sensor_config(url, [{"name": "v", "address": 0}], unit=7))
    silent = ModbusSensor(
        sensor_config(url, [{"name": "v", "address": 0}], unit=9, request_timeout=0.3)
    )
    try:
        started = time.monotonic()
        with pytest.raises(
            ModbusError, match=r"unit 9: read holding 0\.\.0: no answer within 0\.3s$"
        ):
            await silent.perceive()
        assert time.monotonic() - started < 2.0
        assert await alive.perceive() == {"v": 99}
    finally:
        await alive.stop()
        await silent.stop()


async def test_the_line_going_away_is_one_line_and_backs_off(
    line: tuple[PtyPair, Device],
) -> None:
    pair, dev = line
    await dev.set("input", 0, [0x4366, 0x8000])  # 230.5
    sensor = ModbusSensor(
        sensor_config(
            rtu(pair),
            [{"name": "volts", "table": "input", "address": 0, "type": "float32"}],
            unit=7,
            request_timeout=0.5,
            reconnect_min=5.0,
        )
    )
    try:
        assert await sensor.perceive() == {"volts": 230.5}
        pair.kill()  # the adapter is unplugged: both ptys close, the link disappears
        errors = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(ModbusError) as err:
                await sensor.perceive()
            assert time.monotonic() - started < 2.0
            errors.append(str(err.value))
        assert errors[-1] == (
            f"rtu://{pair.a} unit 7: read input 0..1: no such serial device {pair.a} "
            f"(next attempt in {errors[-1].rsplit(' ', 1)[1]}"
        )
        assert all("\n" not in e and e.startswith(f"rtu://{pair.a} unit 7: ") for e in errors)
    finally:
        await sensor.stop()
