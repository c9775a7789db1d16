"""Real Modbus devices for the tests: a pymodbus server (TCP on 127.0.0.1, or RTU on one end
of a socat pseudo-terminal pair) with a known register map, whose datastore the tests set and
read, and which records every write it receives.

``python -m tests.plugins.modbus_helpers DIR`` runs one of each until killed, writing
``DIR/tcp.port`` and linking ``DIR/ttyRTU`` (the docs test points the examples at them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["FC", "Device", "PtyPair", "StandIns", "stand_ins"]

#: the function code that reads each table (the datastore is addressed by them)
FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: function codes that write
WRITES = {5, 6, 15, 16}


class Device:
    """A Modbus device on a pymodbus server: every address 0..size-1 of each table exists."""

    def __init__(self, unit: int = 1, size: int = 1024) -> None:
        self.unit = unit
        self.size = size
        #: RTU unit ids whose answers are never sent (units that are not on the line)
        self.silent: set[int] = set()
        #: every request a client sent, as it arrived
        self.requests: list[ModbusPDU] = []
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.url = ""

    @property
    def writes(self) -> list[tuple[int, int, list[int] | list[bool]]]:
        """(function code, address, values) of every write request."""
        return [
            (
                p.function_code,
                p.address,
                list(p.bits) if p.function_code in (5, 15) else list(p.registers),
            )
            for p in self.requests
            if p.function_code in WRITES
        ]

    @property
    def reads(self) -> list[tuple[int, int, int]]:
        """(function code, address, count) of every read request."""
        return [
            (p.function_code, p.address, p.count)
            for p in self.requests
            if p.function_code in FC.values()
        ]

    def _packet(self, sending: bool, data: bytes) -> bytes:
        # an RTU frame starts with the unit id
        return b"" if sending and data and data[0] in self.silent else data

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append(pdu)
        return pdu

    def _device(self) -> SimDevice:
        def bits() -> list[SimData]:
            return [SimData(0, count=self.size, values=False, datatype=DataType.BITS)]

        def regs() -> list[SimData]:
            return [SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(id=self.unit, simdata=(bits(), bits(), regs(), regs()))

    async def start_tcp(self, port: int = 0) -> str:
        self.server = ModbusTcpServer(
            self._device(), address=("127.0.0.1", port), trace_pdu=self._trace
        )
        await self.server.serve_forever(background=True)
        sock = self.server.transport.sockets[0]  # type: ignore[attr-defined]
        self.url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    async def start_rtu(self, port: str, baud: int = 9600, parity: str = "N") -> None:
        self.server = ModbusSerialServer(
            self._device(),
            port=port,
            baudrate=baud,
            parity=parity,
            reconnect_delay=0,
            trace_pdu=self._trace,
            trace_packet=self._packet,
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def set(self, table: str, address: int, values: list[int] | list[bool]) -> None:
        assert self.server is not None
        await self.server.async_setValues(self.unit, FC[table], address, values)

    async def get(self, table: str, address: int, count: int) -> list[int] | list[bool]:
        assert self.server is not None
        return await self.server.async_getValues(self.unit, FC[table], address, count)


class PtyPair:
    """``socat -d -d pty,raw,echo=0 pty,raw,echo=0``: two linked pseudo-terminals, reached
    through the symlinks ``a`` and ``b`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.a = str(directory / "ttyA")
        self.b = str(directory / "ttyB")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PtyPair:
        socat = shutil.which("socat")
        assert socat, "socat is not installed"
        self.proc = subprocess.Popen(
            [
                socat,
                "-d",
                "-d",
                f"pty,raw,echo=0,link={self.a}",
                f"pty,raw,echo=0,link={self.b}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            assert self.proc.poll() is None, "socat exited"
            assert time.monotonic() < deadline, "socat made no ptys"
            time.sleep(0.01)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class StandIns:
    """The stand-in devices' process (`stand_ins`)."""

    def __init__(self, proc: subprocess.Popen[bytes], directory: Path) -> None:
        self.proc = proc
        self.tcp = f"tcp://127.0.0.1:{(directory / 'tcp.port').read_text().strip()}"
        self.tty = str(directory / "ttyRTU")
        self.socat = int((directory / "socat.pid").read_text())

    def point(self, conf: Path) -> None:
        """Point the ``tcp://`` and ``rtu://`` URLs of a config file at the stand-ins."""
        text = re.sub(r'"tcp://[^"]*"', f'"{self.tcp}"', conf.read_text())
        conf.write_text(re.sub(r'"rtu://(/[^?"]*)', f'"rtu://{self.tty}', text))


@contextlib.contextmanager
def stand_ins(directory: Path) -> Iterator[StandIns]:
    """A subprocess serving one Modbus TCP device and one RTU device (on a pty pair; every
    unit id, every address below 1024 of each table, all zero) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.plugins.modbus_helpers", str(directory)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (directory / "ready").exists():
            assert proc.poll() is None, "the Modbus stand-ins exited"
            assert time.monotonic() < deadline, "the Modbus stand-ins did not start"
            time.sleep(0.05)
        yield StandIns(proc, directory)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a test may have stopped it
            proc.terminate()
            proc.wait(10)


async def _serve(directory: Path) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    pair = PtyPair(directory).start()
    os.replace(pair.a, directory / "ttyRTU")
    try:
        tcp, rtu = Device(unit=0), Device(unit=0)
        url = await tcp.start_tcp()
        await rtu.start_rtu(pair.b)
        (directory / "tcp.port").write_text(url.rsplit(":", 1)[1])
        assert pair.proc is not None
        (directory / "socat.pid").write_text(str(pair.proc.pid))
        (directory / "ready").write_text("")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await tcp.stop()
        await rtu.stop()
    finally:
        pair.kill()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1])))
