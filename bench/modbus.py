"""Modbus: 100 registers read per tick from a local pymodbus TCP server, through the `modbus`
sensor (agentd/devices/modbus.py: the planned requests, the shared link with its deadlines,
the decoding, scaling and naming) vs pymodbus's own client loop doing the same reads and the
same conversions (``read_holding_registers``/``read_input_registers`` and
``convert_from_registers``), in the same run, on the same event loop (uvloop, as the daemon).

The map: 30 float32 values (60 holding registers, ABCD) and 40 uint16 input registers scaled by
0.1: two requests per read. The server runs in its own process (a device is not on the agent's
event loop). Both sides read back to back for the same time, in alternating rounds; the figure
is reads/s (one read = the 100 registers), the best round of each. Target (issue 16): the
sensor does >= 0.8x the reads/s of pymodbus's own loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, print_table, ratio_figure

FLOATS = 30
WORDS = 40


def _config(url: str) -> object:
    import msgspec

    from agentd.plugins.builtin.modbus import ModbusSensorConfig

    regs: list[dict[str, object]] = [
        {"name": f"f{i}", "address": 2 * i, "type": "float32", "unit": "W"} for i in range(FLOATS)
    ]
    regs += [
        {"name": f"w{i}", "table": "input", "address": i, "scale": 0.1, "unit": "V"}
        for i in range(WORDS)
    ]
    return msgspec.convert({"url": url, "registers": regs}, ModbusSensorConfig)


async def _ours(url: str, seconds: float) -> float:
    from agentd.devices.modbus import ModbusSensor

    sensor = ModbusSensor(_config(url))  # type: ignore[arg-type]
    await sensor.start()
    try:
        assert len(sensor.requests) == 2
        readings = await sensor.perceive()
        assert len(readings) == FLOATS + WORDS
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            await sensor.perceive()
            n += 1
        return n / elapsed
    finally:
        await sensor.stop()


async def _theirs(url: str, seconds: float) -> float:
    from pymodbus.client import AsyncModbusTcpClient

    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port))
    f32 = client.DATATYPE.FLOAT32
    u16 = client.DATATYPE.UINT16
    await client.connect()
    try:

        async def read() -> dict[str, float]:
            hr = await client.read_holding_registers(0, count=2 * FLOATS, device_id=1)
            ir = await client.read_input_registers(0, count=WORDS, device_id=1)
            out: dict[str, float] = {}
            for i in range(FLOATS):
                out[f"f{i}"] = float(
                    client.convert_from_registers(hr.registers[2 * i : 2 * i + 2], f32)
                )  # type: ignore[arg-type]
            for i in range(WORDS):
                out[f"w{i}"] = (
                    float(client.convert_from_registers(ir.registers[i : i + 1], u16)) * 0.1
                )  # type: ignore[arg-type]
            return out

        assert len(await read()) == FLOATS + WORDS
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            await read()
            n += 1
        return n / elapsed
    finally:
        client.close()


async def _serve(port_file: str) -> None:
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    regs = [SimData(0, count=256, values=0x4148, datatype=DataType.REGISTERS)]
    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    device = SimDevice(id=0, simdata=(bits, bits, regs, list(regs)))
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    Path(port_file).write_text(str(port))
    await asyncio.Event().wait()


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def run(quick: bool = False) -> list[Figure]:
    seconds = 1.0 if quick else 3.0
    rounds = 2 if quick else 3
    base = Path(tempfile.mkdtemp(prefix="agmodbus"))
    port_file = base / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.modbus", "--serve", str(port_file)],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                return [
                    Figure(
                        "modbus: 100 registers/read",
                        None,
                        None,
                        "reads/s",
                        ">= 0.8x",
                        False,
                        note="the pymodbus server did not start",
                    )
                ]
            time.sleep(0.05)
        url = f"tcp://127.0.0.1:{port_file.read_text()}"
        ours: list[float] = []
        theirs: list[float] = []
        with asyncio.Runner(loop_factory=_loop_factory) as runner:
            for _ in range(rounds):
                theirs.append(runner.run(_theirs(url, seconds)))
                ours.append(runner.run(_ours(url, seconds)))
    finally:
        server.terminate()
        server.wait(10)
    return [
        ratio_figure(
            "modbus: 100 registers/read (TCP, 2 requests)",
            max(ours),
            max(theirs),
            "reads/s",
            target=">= 0.8x",
            min_ratio=0.8,
            note=(
                f"best of {rounds} rounds of {seconds:g}s; the sensor (planned requests, link "
                "deadlines, names, scaling) vs pymodbus's own read + convert_from_registers loop; "
                f"rounds: sensor {', '.join(f'{x:,.0f}' for x in ours)}, "
                f"pymodbus {', '.join(f'{x:,.0f}' for x in theirs)}"
            ),
        )
    ]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(_serve(sys.argv[2]))
        return
    print_table(run(quick="--quick" in sys.argv))


if __name__ == "__main__":
    main()
