"""Modbus register maps without the protocol: value types, word and byte order, scaling, and
the plan of read requests. Pure Python (no pymodbus): the config module checks register maps
with it at load time, and the tests check it against pymodbus's own converter.

Byte order: a value's bytes, most significant first, are ``A B C D`` (``A``..``H`` for a
float64). ``ABCD`` sends them in that order, two per register (big-endian, the Modbus
default); ``CDAB`` swaps the registers (the low word first, as many meters and PLCs do; for a
float64 all four registers are reversed, as pymodbus's ``word_order="little"``); ``BADC`` swaps
the two bytes inside each register; ``DCBA`` does both (fully little-endian). A 16-bit value has
one register: ``BADC``/``DCBA`` swap its two bytes, ``ABCD``/``CDAB`` do not.

pymodbus's ``convert_from_registers`` knows the word order only, not the byte swap inside a
register, so the conversion is ``struct`` here: one code path for the four orders.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "BIT_TABLES",
    "MAX_BITS",
    "MAX_REGISTERS",
    "RANGES",
    "WIDTHS",
    "DataType",
    "Order",
    "Request",
    "Span",
    "Table",
    "decode",
    "encode",
    "plan",
    "to_raw",
]

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]

#: the protocol's own limits for one read (Modbus Application Protocol v1.1b3, 6.1-6.4)
MAX_REGISTERS: Final = 125
MAX_BITS: Final = 2000
#: tables of single bits (a register table holds 16-bit words)
BIT_TABLES: Final[frozenset[str]] = frozenset({"coil", "discrete"})
#: registers (or bits) a value of each type takes
WIDTHS: Final[dict[str, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
    "bool": 1,
}
#: the raw values each integer type can hold
RANGES: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_FORMATS: Final = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "float64": "d",
}
#: the largest finite float32 (a float64 is a Python float)
FLOAT32_MAX: Final = 3.4028234663852886e38


def _swap_bytes(data: bytes) -> bytes:
    out = bytearray(data)
    out[0::2], out[1::2] = data[1::2], data[0::2]
    return bytes(out)


def decode(words: Sequence[int], dtype: DataType, order: Order) -> int | float:
    """The value of ``words`` (16-bit registers as read) of type ``dtype`` in ``order``."""
    if dtype == "bool":
        return int(any(words))
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    data = b"".join(w.to_bytes(2, "big") for w in words)
    if order in ("BADC", "DCBA"):
        data = _swap_bytes(data)
    value: int | float = struct.unpack(">" + _FORMATS[dtype], data)[0]
    return value


def encode(value: int | float, dtype: DataType, order: Order) -> list[int]:
    """The registers to write for a raw ``value`` (the inverse of `decode`)."""
    if dtype == "bool":
        return [1 if value else 0]
    data = struct.pack(">" + _FORMATS[dtype], value)
    if order in ("BADC", "DCBA"):
        data = _swap_bytes(data)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if order in ("CDAB", "DCBA") else words


def to_raw(value: float, dtype: DataType, scale: float, offset: float) -> int | float | str:
    """The raw register value for an engineering ``value`` (``raw * scale + offset``), or a
    one-line reason it cannot be written (out of the type's range, not a whole raw step)."""
    raw = (value - offset) / scale
    if dtype in ("float32", "float64"):
        limit = FLOAT32_MAX if dtype == "float32" else math.inf
        if not math.isfinite(raw) or abs(raw) > limit:
            return f"{value!r} is out of range ({dtype} register)"
        return raw
    nearest = round(raw)
    if abs(raw - nearest) > 1e-6 * max(1.0, abs(raw)):
        if scale == 1 and offset == 0:
            return f"{value!r} is not a whole number ({dtype} register)"
        return f"{value!r} is not a whole number of steps of {scale:g} ({dtype} register)"
    lo, hi = RANGES[dtype]
    if not lo <= nearest <= hi:
        return f"{value!r} is out of range ({dtype} register: raw {nearest} not in {lo}..{hi})"
    return nearest


@dataclass(frozen=True, slots=True)
class Span:
    """One named register (or bit) in a table."""

    name: str
    table: Table
    address: int
    dtype: DataType
    order: Order = "ABCD"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        return 1 if self.table in BIT_TABLES else WIDTHS[self.dtype]

    @property
    def end(self) -> int:
        """One past the last address it takes."""
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``count`` registers (or bits) of ``table`` from ``address``, and the spans it
    carries (each wholly inside it)."""

    table: Table
    address: int
    count: int
    spans: tuple[Span, ...]


def plan(spans: Iterable[Span], *, max_registers: int, max_bits: int, gap: int) -> list[Request]:
    """The fewest reads that cover ``spans``: spans of one table whose addresses are at most
    ``gap`` apart share a read (the registers between them are read and ignored), and no read
    exceeds ``max_registers`` (``max_bits`` for coils and discrete inputs). Spans must not
    overlap (the config refuses that)."""
    out: list[Request] = []
    by_table: dict[Table, list[Span]] = {}
    for span in spans:
        by_table.setdefault(span.table, []).append(span)
    for table in ("holding", "input", "coil", "discrete"):
        limit = max_bits if table in BIT_TABLES else max_registers
        current: list[Span] = []
        for span in sorted(by_table.get(table, ()), key=lambda s: s.address):
            if current and (
                span.address - current[-1].end > gap or span.end - current[0].address > limit
            ):
                out.append(_request(current))
                current = []
            current.append(span)
        if current:
            out.append(_request(current))
    return out


def _request(spans: list[Span]) -> Request:
    first, last = spans[0], spans[-1]
    return Request(first.table, first.address, last.end - first.address, tuple(spans))
