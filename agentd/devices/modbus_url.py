"""Where a Modbus device is: ``tcp://HOST[:PORT]`` (Modbus TCP, port 502 by default) or
``rtu:///dev/PATH?baud=9600&parity=N&stop=1&bytesize=8`` (Modbus RTU on a serial line). Pure
Python: the config checks a URL at load time with `parse_url`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = ["BAUDS", "Endpoint", "parse_url"]

#: the rates termios can set on Linux (pyserial refuses others on a real port)
BAUDS: Final = frozenset(
    {1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600}
)
_SERIAL_KEYS: Final = ("baud", "parity", "stop", "bytesize")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed URL. ``key`` names the connection: instances on the same key share it (one TCP
    connection to a host and port, one open serial port)."""

    scheme: Literal["tcp", "rtu"]
    host: str = ""
    port: int = 502
    path: str = ""
    baud: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stop: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def key(self) -> str:
        return f"tcp://{self.host}:{self.port}" if self.scheme == "tcp" else f"rtu://{self.path}"

    @property
    def line(self) -> tuple[int, str, int, int]:
        """The serial line settings two users of one port must agree on."""
        return (self.baud, self.parity, self.stop, self.bytesize)


def parse_url(url: str) -> Endpoint:
    """The endpoint of ``url``; ValueError with a one-line reason naming the bad part."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme == "tcp":
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host (tcp://HOST[:PORT])")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"{url!r}: a tcp:// URL is tcp://HOST[:PORT], nothing more")
        return Endpoint("tcp", host=parts.hostname, port=502 if port is None else port)
    if parts.scheme != "rtu":
        raise ValueError(f"{url!r} is neither tcp://HOST[:PORT] nor rtu:///dev/PATH?baud=...")
    if parts.netloc or not parts.path.startswith("/") or "\x00" in parts.path:
        raise ValueError(f"{url!r}: an rtu URL names a serial device: rtu:///dev/ttyUSB0")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_SERIAL_KEYS))
    if unknown:
        known = ", ".join(_SERIAL_KEYS)
        raise ValueError(f"{url!r}: unknown setting {unknown[0]!r} (known: {known})")
    baud = _number(url, query, "baud", 9600)
    if baud not in BAUDS:
        raise ValueError(f"{url!r}: baud={baud} is not a standard rate (9600, 19200, ...)")
    parity = query.get("parity", "N").upper()
    if parity not in ("N", "E", "O"):
        raise ValueError(f"{url!r}: parity={parity!r} is not N, E or O")
    stop = _number(url, query, "stop", 1)
    if stop not in (1, 2):
        raise ValueError(f"{url!r}: stop={stop} is not 1 or 2")
    bytesize = _number(url, query, "bytesize", 8)
    if bytesize not in (7, 8):
        raise ValueError(f"{url!r}: bytesize={bytesize} is not 7 or 8")
    return Endpoint(
        "rtu",
        path=parts.path,
        baud=baud,
        parity=parity,  # type: ignore[arg-type]  # checked above
        stop=stop,  # type: ignore[arg-type]
        bytesize=bytesize,  # type: ignore[arg-type]
    )


def _number(url: str, query: dict[str, str], key: str, default: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.isdigit():
        raise ValueError(f"{url!r}: {key}={text!r} is not a number")
    return int(text)
