"""The `modbus` sensor and actuator over pymodbus (the config is agentd/plugins/builtin/modbus.py).

One connection per device: instances on the same URL (a TCP host and port, a serial port)
share one `Link` from the process-wide `POOL`, counted by users and closed when the last one
stops. pymodbus's client serialises the requests of a link (a lock in its transaction
manager), so a sensor and an actuator on one RS-485 line never talk over each other.

Bounds, and who owns them:
- pymodbus makes one attempt per request and never reconnects on its own (``retries=0``,
  ``reconnect_delay=0``): the sensor's next tick is the retry, the supervisor's degraded
  back-off slows a failing plugin, and `Link` bounds reconnects with its own exponential
  back-off (``reconnect_min`` doubling up to ``reconnect_max``; while it waits, a call fails at
  once instead of trying again).
- Every wait has an asyncio deadline of ours: ``connect_timeout`` for opening, then
  ``request_timeout`` for one request (queueing behind the link's other user included).
  pymodbus's own timeout is set far above them so ours always speak first. Everything is
  asyncio on the loop (the serial port is non-blocking, read through ``add_reader``): no worker
  thread that a dead device could hang.
- A request that timed out or was cancelled (the plugin's timeout) closes the link: an answer
  arriving late must not be taken for the answer to the next request (RTU frames carry no
  transaction id). The next call reopens it at once; only a failed open starts the back-off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from agentd.devices.modbus_codec import BIT_TABLES, Request, decode, encode, plan, to_raw
from agentd.devices.modbus_url import Endpoint, parse_url
from agentd.model import Action, Value
from agentd.plugins.base import ActuatorReply
from agentd.plugins.builtin.modbus import (
    PARAM,
    ModbusActuatorConfig,
    ModbusConfig,
    ModbusSensorConfig,
    Register,
)
from agentd.plugins.paramschema import ParamsSchema

__all__ = ["POOL", "Link", "LinkPool", "ModbusActuator", "ModbusError", "ModbusSensor"]

log = logging.getLogger("agentd.plugins")

# pymodbus logs every failed connect and every unanswered request (WARNING/ERROR): the plugin's
# one-line error says it, once, when the plugin's state changes. Configured levels win.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

#: pymodbus's own deadline: far above ours, which always expire first
_LIBRARY_TIMEOUT: Final = 3600.0

#: Modbus exception codes (Modbus Application Protocol v1.1b3, 7)
EXCEPTION_CODES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """A request that did not succeed: one line naming the device."""


Call = Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient], Awaitable[ModbusPDU]]


class Link:
    """One connection to one endpoint, shared by the instances configured on it."""

    __slots__ = (
        "_opening",
        "client",
        "delay",
        "endpoint",
        "key",
        "last_error",
        "retry_at",
        "users",
    )

    def __init__(self, endpoint: Endpoint, key: str = "") -> None:
        self.endpoint = endpoint
        #: the pool's key (the serial port's real path)
        self.key = key or endpoint.key
        self.users = 0
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        #: the back-off after failed opens: no new attempt before ``retry_at``
        self.delay = 0.0
        self.retry_at = 0.0
        self.last_error = ""
        self._opening = asyncio.Lock()

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        e = self.endpoint
        if e.scheme == "tcp":
            return AsyncModbusTcpClient(
                e.host,
                port=e.port,
                name=e.key,
                retries=0,
                reconnect_delay=0,
                reconnect_delay_max=0,
                timeout=_LIBRARY_TIMEOUT,
            )
        return AsyncModbusSerialClient(
            e.path,
            name=e.key,
            baudrate=e.baud,
            bytesize=e.bytesize,
            parity=e.parity,
            stopbits=e.stop,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            timeout=_LIBRARY_TIMEOUT,
        )

    async def open(
        self, timeout: float, backoff: tuple[float, float]
    ) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """The connected client; opens it unless the back-off says not yet."""
        client = self.client
        if client is not None and client.connected:
            return client
        self._check_backoff()
        async with asyncio.timeout(timeout):
            async with self._opening:  # another user may be opening it right now
                if self.client is not None and self.client.connected:
                    return self.client
                self._check_backoff()  # the one before us may just have failed
                self.drop()
                client = self._new_client()
                try:
                    ok = await client.connect()
                except BaseException:
                    client.close()
                    raise
                if not ok:
                    client.close()
                    self._failed(self._why_not(), backoff)
                self.client, self.delay = client, 0.0
        return client

    def _check_backoff(self) -> None:
        now = time.monotonic()
        if now < self.retry_at:
            raise ModbusError(f"{self.last_error} (next attempt in {self.retry_at - now:.1f}s)")

    def _why_not(self) -> str:
        e = self.endpoint
        if e.scheme == "rtu" and not os.path.exists(e.path):
            return f"no such serial device {e.path}"
        if e.scheme == "rtu":
            return f"cannot open {e.path}"
        return f"cannot connect to {e.host}:{e.port}"

    def _failed(self, reason: str, backoff: tuple[float, float]) -> NoReturn:
        lo, hi = backoff
        self.delay = min(max(self.delay * 2, lo), hi)
        self.retry_at = time.monotonic() + self.delay
        self.last_error = reason
        raise ModbusError(reason)

    async def call(
        self,
        request: Call,
        *,
        timeout: float,
        connect_timeout: float,
        backoff: tuple[float, float],
    ) -> ModbusPDU:
        """One request with its deadline; an exception answer or none at all is a
        `ModbusError`."""
        try:
            client = await self.open(connect_timeout, backoff)
        except TimeoutError:
            self._failed(f"no connection within {connect_timeout:g}s", backoff)
        try:
            async with asyncio.timeout(timeout):
                pdu = await request(client)
        except TimeoutError:
            self.drop(client)
            raise ModbusError(f"no answer within {timeout:g}s") from None
        except asyncio.CancelledError:
            self.drop(client)
            raise
        except ModbusException as exc:
            self.drop(client)
            raise ModbusError(" ".join(str(exc).split())[:200]) from None
        if pdu.isError():
            code = pdu.exception_code
            raise ModbusError(f"exception {code} ({EXCEPTION_CODES.get(code, 'unknown')})")
        return pdu

    def drop(self, client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None) -> None:
        """Close the connection (the next call opens a new one). With ``client``: only if it
        is still the link's, so a request that failed on an old connection does not close the
        new one another user has opened since."""
        if client is None:
            client = self.client
        if client is self.client:
            self.client = None
        if client is not None:
            client.close()


class LinkPool:
    """The process's links by endpoint key, with their users counted."""

    __slots__ = ("_links",)

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}

    def acquire(self, endpoint: Endpoint) -> Link:
        key = _pool_key(endpoint)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = Link(endpoint, key)
        elif link.endpoint.line != endpoint.line and endpoint.scheme == "rtu":
            have, want = link.endpoint, endpoint
            raise ModbusError(
                f"{endpoint.path} is open at baud={have.baud} parity={have.parity} "
                f"stop={have.stop} bytesize={have.bytesize} by another instance; this one asks "
                f"for baud={want.baud} parity={want.parity} stop={want.stop} "
                f"bytesize={want.bytesize}"
            )
        link.users += 1
        return link

    def release(self, link: Link) -> None:
        link.users -= 1
        if link.users <= 0:
            link.drop()
            if self._links.get(link.key) is link:
                del self._links[link.key]

    def links(self) -> dict[str, int]:
        """Endpoint key -> users (for tests and diagnostics)."""
        return {k: v.users for k, v in self._links.items()}


def _pool_key(endpoint: Endpoint) -> str:
    # one port under two names (/dev/ttyUSB0 and its /dev/serial/by-id/... link) is one line:
    # the second open would fail on the exclusive lock
    if endpoint.scheme == "rtu":
        return f"rtu://{os.path.realpath(endpoint.path)}"
    return endpoint.key


#: the one pool of the process
POOL = LinkPool()


class _Device:
    """What the sensor and the actuator share: the link, acquired at start."""

    def __init__(self, config: ModbusConfig) -> None:
        self.base = config
        self.endpoint = parse_url(config.url)
        self.link: Link | None = None

    async def start(self) -> None:
        # no I/O: a device that is off when agentd starts must not stop it; the first call
        # opens the connection
        if self.link is None:
            self.link = POOL.acquire(self.endpoint)

    async def stop(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            POOL.release(link)

    async def _call(self, request: Call, what: str) -> ModbusPDU:
        if self.link is None:
            await self.start()
        assert self.link is not None
        c = self.base
        try:
            return await self.link.call(
                request,
                timeout=c.request_timeout,
                connect_timeout=c.connect_timeout,
                backoff=(c.reconnect_min, c.reconnect_max),
            )
        except ModbusError as exc:
            raise ModbusError(f"{self.endpoint.key} unit {c.unit}: {what}: {exc}") from None


class ModbusSensor(_Device):
    def __init__(self, config: ModbusSensorConfig) -> None:
        super().__init__(config)
        self.config = config
        self.requests = plan(
            (r.span() for r in config.registers),
            max_registers=config.max_registers,
            max_bits=config.max_bits,
            gap=config.gap,
        )
        #: registers that read as NaN or infinity (said once, not reported until they recover)
        self.not_finite: set[str] = set()

    async def perceive(self) -> dict[str, Value]:
        out: dict[str, Value] = {}
        unit = self.config.unit
        for req in self.requests:
            what = f"read {req.table} {req.address}..{req.address + req.count - 1}"
            pdu = await self._call(_reader(req, unit), what)
            self._decode(req, pdu, out, what)
        return out

    def _decode(self, req: Request, pdu: ModbusPDU, out: dict[str, Value], what: str) -> None:
        if req.table in BIT_TABLES:
            bits = list(pdu.bits)
            if len(bits) < req.count:
                raise ModbusError(f"{self.endpoint.key}: {what}: {len(bits)} bits in the answer")
            for span in req.spans:
                out[span.name] = bool(bits[span.address - req.address])
            return
        words = list(pdu.registers)
        if len(words) < req.count:
            raise ModbusError(f"{self.endpoint.key}: {what}: {len(words)} registers in the answer")
        for span in req.spans:
            at = span.address - req.address
            raw = decode(words[at : at + span.width], span.dtype, span.order)
            if span.dtype == "bool":
                out[span.name] = bool(raw)
            elif span.scale == 1 and span.offset == 0 and isinstance(raw, int):
                out[span.name] = raw
            else:
                value = raw * span.scale + span.offset
                if not math.isfinite(value):
                    if span.name not in self.not_finite:
                        self.not_finite.add(span.name)
                        log.warning(
                            "modbus %s: register %r reads %s: not reported until it is a number",
                            self.endpoint.key,
                            span.name,
                            value,
                        )
                    continue
                self.not_finite.discard(span.name)
                out[span.name] = float(value)


def _reader(req: Request, unit: int) -> Call:
    async def read(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> ModbusPDU:
        if req.table == "holding":
            return await client.read_holding_registers(req.address, count=req.count, device_id=unit)
        if req.table == "input":
            return await client.read_input_registers(req.address, count=req.count, device_id=unit)
        if req.table == "coil":
            return await client.read_coils(req.address, count=req.count, device_id=unit)
        return await client.read_discrete_inputs(req.address, count=req.count, device_id=unit)

    return read


class ModbusActuator(_Device):
    def __init__(self, config: ModbusActuatorConfig) -> None:
        super().__init__(config)
        self.config = config
        self.registers: dict[str, Register] = {r.name: r for r in config.registers}
        self.schemas = {r.name: ParamsSchema(r.params_schema()) for r in config.registers}

    def validate(self, action: Action) -> str | None:
        """Why ``action`` must not be sent (one line), or None: called before any request."""
        reg = self.registers.get(action.name)
        if reg is None:
            return f"no register {action.name!r} (registers: {', '.join(self.registers)})"
        problem = self.schemas[reg.name].problem(action.params)
        if problem is not None:
            return problem
        if reg.dtype != "bool":
            raw = to_raw(float(action.params[PARAM]), reg.dtype, reg.scale, reg.offset)
            if isinstance(raw, str):
                return f"params.{PARAM}: {raw}"
        return None

    async def act(self, action: Action) -> ActuatorReply:
        problem = self.validate(action)
        if problem is not None:  # the action path validated it; this never sends a bad value
            raise ModbusError(problem)
        reg = self.registers[action.name]
        unit = self.config.unit
        value = action.params[PARAM]
        if reg.table == "coil":
            state = bool(value)
            await self._call(
                lambda c: c.write_coil(reg.address, state, device_id=unit),
                f"write coil {reg.address}",
            )
            return ActuatorReply(output={"register": reg.name, "coil": reg.address, "to": state})
        raw: int | float
        if isinstance(value, bool):
            raw = int(value)
        else:
            converted = to_raw(float(value), reg.dtype, reg.scale, reg.offset)
            assert not isinstance(converted, str)  # validate() said so
            raw = converted
        words = encode(raw, reg.dtype, reg.order)
        if len(words) == 1 and not self.config.write_multiple:
            request: Call = lambda c: c.write_register(reg.address, words[0], device_id=unit)  # noqa: E731
        else:
            request = lambda c: c.write_registers(reg.address, words, device_id=unit)  # noqa: E731
        await self._call(request, f"write holding {reg.address}..{reg.address + len(words) - 1}")
        return ActuatorReply(
            output={"register": reg.name, "address": reg.address, "to": value, "raw": raw}
        )
