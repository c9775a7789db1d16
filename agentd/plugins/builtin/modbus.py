"""`modbus` sensor and actuator: a device's register map in the config, read over Modbus TCP or
RTU (agentd/devices/modbus.py, on pymodbus) and written by name.

The sensor's readings are its registers by name (``meter.voltage_l1``), scaled; registers of
one table that lie close together are read in one request (planned once, when it is built).
The actuator has one action per register of the holding or coil table, named after it, with
one param ``to`` (the engineering value: ``raw * scale + offset``); its JSON Schema carries the
range the register's type and its ``min``/``max`` allow, and a value outside it is refused
before anything is sent. A sensor and an actuator on the same URL share one connection.

pymodbus and pyserial are imported when an instance is built, not when the registry is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from agentd.devices.modbus_codec import (
    BIT_TABLES,
    FLOAT32_MAX,
    MAX_BITS,
    MAX_REGISTERS,
    RANGES,
    DataType,
    Order,
    Span,
    Table,
)
from agentd.devices.modbus_url import parse_url
from agentd.plugins.base import PluginSpec
from agentd.plugins.paramschema import AnyParams

if TYPE_CHECKING:
    from agentd.devices.modbus import ModbusActuator, ModbusSensor

__all__ = [
    "ACTUATOR_SPEC",
    "SENSOR_SPEC",
    "ModbusActuatorConfig",
    "ModbusConfig",
    "ModbusSensorConfig",
    "Register",
]

#: registers in one instance's map
MAX_MAP = 1024
#: the written param of every action
PARAM = "to"

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")]
Address = Annotated[int, Meta(ge=0, le=65535)]


class Register(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One named value of the device's map."""

    #: the metric name (sensor) or the action name (actuator)
    name: Name
    table: Table = "holding"
    #: 0-based, as on the wire (a manual's "register 40001" is holding address 0)
    address: Address
    #: default: ``bool`` in the coil and discrete tables, ``uint16`` in the register tables
    type: DataType | None = None
    order: Order = "ABCD"
    #: the reading is ``raw * scale + offset``
    scale: Annotated[float, Meta(gt=-1e12, lt=1e12)] = 1.0
    offset: Annotated[float, Meta(gt=-1e12, lt=1e12)] = 0.0
    unit: Annotated[str, Meta(max_length=32)] = ""
    #: the actuator refuses values outside [min, max] (engineering units)
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        dtype = self.dtype
        if self.table in BIT_TABLES and dtype != "bool":
            raise ValueError(
                f"{self.name!r}: the {self.table} table holds single bits: type must be bool, "
                f"not {dtype}"
            )
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"{self.name!r}: scale must be a non-zero number")
        span = self.span()
        if span.end > 65536:
            raise ValueError(
                f"{self.name!r}: a {dtype} at address {self.address} ends past 65535 "
                f"(it takes {span.width} registers)"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.name!r}: min {self.min:g} is above max {self.max:g}")
        if dtype == "bool" and (self.min is not None or self.max is not None):
            raise ValueError(f"{self.name!r}: a bool has no min or max")

    @property
    def dtype(self) -> DataType:
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES else "uint16"

    def span(self) -> Span:
        return Span(
            self.name, self.table, self.address, self.dtype, self.order, self.scale, self.offset
        )

    def value_range(self) -> tuple[float, float] | None:
        """The engineering values this register can be written with (type range through
        scale/offset, narrowed by min/max); None for a bool."""
        dtype = self.dtype
        if dtype == "bool":
            return None
        lo_raw, hi_raw = RANGES.get(dtype, (-FLOAT32_MAX, FLOAT32_MAX))
        if dtype == "float64":
            lo_raw, hi_raw = -math.inf, math.inf
        ends = sorted((lo_raw * self.scale + self.offset, hi_raw * self.scale + self.offset))
        lo, hi = ends
        if self.min is not None:
            lo = max(lo, self.min)
        if self.max is not None:
            hi = min(hi, self.max)
        return lo, hi

    def params_schema(self) -> dict[str, object]:
        """The JSON Schema of this register's action params."""
        value: dict[str, object]
        rng = self.value_range()
        if rng is None:
            value = {"type": "boolean"}
        else:
            integral = self.dtype in RANGES and self.scale == 1 and self.offset == 0
            value = {"type": "integer" if integral else "number"}
            if math.isfinite(rng[0]):
                value["minimum"] = _plain(rng[0])
            if math.isfinite(rng[1]):
                value["maximum"] = _plain(rng[1])
        if self.unit:
            value["description"] = f"in {self.unit}"
        # other params are allowed and ignored: a threshold policy adds metric, value, threshold
        return {"type": "object", "properties": {PARAM: value}, "required": [PARAM]}


def _plain(x: float) -> int | float:
    """A whole bound as an int, so errors say "maximum of 60", not "60.0"."""
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


class ModbusConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The keys a sensor and an actuator share."""

    #: ``tcp://HOST[:PORT]`` or ``rtu:///dev/ttyUSB0?baud=9600&parity=N&stop=1&bytesize=8``
    url: str
    #: the unit (slave) id: 1..247 on a serial line (0 is its broadcast address, which no unit
    #: answers); 0..255 over TCP (gateways route by it; many TCP devices want 1, 0 or 255)
    unit: Annotated[int, Meta(ge=0, le=255)] = 1
    registers: Annotated[list[Register], Meta(min_length=1, max_length=MAX_MAP)]
    #: seconds one request may take (waiting for the shared connection included); keep
    #: ``requests x request_timeout`` below the plugin's timeout (default: the loop interval)
    request_timeout: Annotated[float, Meta(gt=0, le=60)] = 0.5
    #: seconds opening the connection may take
    connect_timeout: Annotated[float, Meta(gt=0, le=60)] = 0.5
    #: after a failed connect, no new attempt for this long, doubling up to ``reconnect_max``
    reconnect_min: Annotated[float, Meta(ge=0, le=3600)] = 0.5
    reconnect_max: Annotated[float, Meta(ge=0, le=3600)] = 30.0

    def __post_init__(self) -> None:
        try:
            endpoint = parse_url(self.url)
        except ValueError as exc:
            raise ValueError(f"`url` {exc}") from None
        if endpoint.scheme == "rtu" and not 1 <= self.unit <= 247:
            raise ValueError(f"`unit` {self.unit}: a unit on a serial line is 1..247")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("`reconnect_max` is below `reconnect_min`")
        seen: dict[str, int] = {}
        for i, reg in enumerate(self.registers):
            if reg.name in seen:
                other = seen[reg.name]
                raise ValueError(f"`registers[{i}]`: the name {reg.name!r} is registers[{other}]'s")
            seen[reg.name] = i
        # two values sharing a register is most often a 32-bit value's second word given to
        # the next value by mistake (float32 at 0, the next at 1 instead of 2)
        spans = sorted(
            ((r.span(), i) for i, r in enumerate(self.registers)),
            key=lambda t: (t[0].table, t[0].address),
        )
        for (a, i), (b, j) in itertools.pairwise(spans):
            if a.table == b.table and b.address < a.end:
                (y, yi), (x, xi) = sorted(((a, i), (b, j)), key=lambda t: t[1])
                raise ValueError(
                    f"`registers[{xi}]` {x.name!r} ({x.table} {x.address}..{x.end - 1}) "
                    f"overlaps registers[{yi}] {y.name!r} ({y.address}..{y.end - 1})"
                )


class ModbusSensorConfig(ModbusConfig, frozen=True):
    #: registers (bits) one read request may carry; the protocol's maximum is 125 (2000):
    #: some devices take less
    max_registers: Annotated[int, Meta(ge=1, le=MAX_REGISTERS)] = MAX_REGISTERS
    max_bits: Annotated[int, Meta(ge=1, le=MAX_BITS)] = MAX_BITS
    #: registers of one table at most this far apart are read in one request (the ones between
    #: are read and ignored); 0 for a device that refuses reads of addresses it does not have
    gap: Annotated[int, Meta(ge=0, le=MAX_REGISTERS - 1)] = 8

    def produces(self) -> dict[str, str]:
        """Metric -> unit (agentd/config_refs.py): one per register."""
        return {r.name: r.unit for r in self.registers}


class ModbusActuatorConfig(ModbusConfig, frozen=True):
    #: write a 16-bit register with "write multiple registers" (function 16) instead of
    #: "write single register" (6), for devices that only implement 16
    write_multiple: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, reg in enumerate(self.registers):
            if reg.table not in ("holding", "coil"):
                raise ValueError(
                    f"`registers[{i}]` {reg.name!r}: the {reg.table} table is read-only "
                    "(an actuator writes holding registers and coils)"
                )

    def offers(self) -> list[str]:
        """The actions (agentd/config_refs.py): one per register."""
        return [r.name for r in self.registers]

    def needs(self, action: str) -> list[str]:
        return [PARAM]

    def action_schemas(self) -> Mapping[str, Mapping[str, Any]]:
        """Action -> params JSON Schema (`agentd schema actuator:NAME`)."""
        return {r.name: r.params_schema() for r in self.registers}


def build_sensor(config: ModbusSensorConfig) -> ModbusSensor:
    from agentd.devices.modbus import ModbusSensor

    return ModbusSensor(config)


def build_actuator(config: ModbusActuatorConfig) -> ModbusActuator:
    from agentd.devices.modbus import ModbusActuator

    return ModbusActuator(config)


SENSOR_SPEC = PluginSpec(
    name="modbus",
    kind="sensor",
    factory=build_sensor,
    config_type=ModbusSensorConfig,
    description="registers and coils of a Modbus TCP or RTU device, by name (pymodbus)",
)

ACTUATOR_SPEC = PluginSpec(
    name="modbus",
    kind="actuator",
    factory=build_actuator,
    config_type=ModbusActuatorConfig,
    description="write a named holding register or coil of a Modbus TCP or RTU device",
    actions={"*": AnyParams},
)
