"""A pipelining control-plane flood: ``conns`` connections, each keeping ``depth`` requests of
one command in flight for ``seconds``. Used by bench/control.py and by the starvation tests;
run in its own process so the load's own Python does not share the daemon's GIL.

    python -m bench.flood SOCKET CONNS DEPTH SECONDS CMD [ARGS_JSON]

prints one JSON line: {"answers": N, "errors": {code: n}, "closed": n}.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import sys
import time

import msgspec

__all__ = ["flood"]


def _frame(rid: int, cmd: str, args: dict[str, object]) -> bytes:
    body = msgspec.msgpack.encode({"id": rid, "cmd": cmd, "args": args})
    return len(body).to_bytes(4, "big") + body


def flood(
    path: str, conns: int, depth: int, seconds: float, cmd: str, args: dict[str, object]
) -> dict[str, object]:
    sel = selectors.DefaultSelector()
    decoder = msgspec.msgpack.Decoder()
    errors: dict[str, int] = {}
    answers = 0
    closed = 0
    rid = 0
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        burst = b"".join(_frame(rid + i, cmd, args) for i in range(depth))
        rid += depth
        s.sendall(burst)
        sel.register(s, selectors.EVENT_READ, bytearray())
    end = time.monotonic() + seconds
    while time.monotonic() < end and sel.get_map():
        for key, _ in sel.select(0.1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            buf: bytearray = key.data
            try:
                chunk = s.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                closed += 1
                sel.unregister(s)
                s.close()
                continue
            buf += chunk
            got = 0
            pos = 0
            while len(buf) - pos >= 4:
                n = int.from_bytes(buf[pos : pos + 4], "big")
                if len(buf) - pos - 4 < n:
                    break
                msg = decoder.decode(bytes(buf[pos + 4 : pos + 4 + n]))
                pos += 4 + n
                got += 1
                error = msg.get("error") if isinstance(msg, dict) else None
                if error:
                    code = str(error.get("code"))
                    errors[code] = errors.get(code, 0) + 1
                else:
                    answers += 1
            del buf[:pos]
            if got:
                with contextlib.suppress(OSError):
                    s.sendall(b"".join(_frame(rid + i, cmd, args) for i in range(got)))
                rid += got
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"answers": answers, "errors": errors, "closed": closed}


def main() -> None:
    path, conns, depth, seconds, cmd = sys.argv[1:6]
    args = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    print(json.dumps(flood(path, int(conns), int(depth), float(seconds), cmd, args)))


if __name__ == "__main__":
    main()
