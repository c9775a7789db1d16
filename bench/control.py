"""Control plane speed, side by side with its practical limit, in one run.

- ``ping`` round trip p50/p99 on 1 connection, and requests/s on 1, 10 and 100 connections, for
  agentd's socket and for a minimal uvloop ``asyncio.Protocol`` server speaking the same framing
  (cut frames, decode msgpack, encode ``{id, result}``) — the baseline.
- Tick lateness p99 while 100 connections hammer the socket: agentd ticking every 100 ms vs a
  bare uvloop ticker (absolute deadlines, no work) in the baseline server's process.
- Tick lateness p99 while 4 connections pipeline the most expensive read command (``plugin``:
  status, config and JSON Schema), 16 requests in flight each (bench/flood.py, its own
  process), side by side with the same daemon idle in the same run (issue 13). The flood runs
  as the bench's user; a read-role client's requests take the same path after the role check.

The load comes from a small C client compiled here with gcc (epoll, one request in flight per
connection), so the client is not the bottleneck; without gcc, several Python client processes
are used instead (and the table says so). Both servers tick every 100 ms in every phase. agentd
runs with the store and telemetry off and logging at warning, so the figures are the control
plane's; one extra row shows the ping round trip with telemetry on (its default: a span per
request).

    python -m bench.control             # about 80 s
    python -m bench.control --pipeline  # the pipelining figure alone, about 25 s
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.common import Figure, print_table, ratio_figure

INTERVAL = 0.1
#: the control plane alone: a span per request (telemetry's default) is measured apart
TELEMETRY_OFF = "[telemetry]\nenabled = false"
PING = {"id": 1, "cmd": "ping"}

LOADGEN_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAXLAT 8000000
struct conn { int fd; double sent; int len; unsigned char buf[65536]; };
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: loadgen SOCK CONNS WARMUP SECONDS HEXFRAME\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *path = argv[1]; int n = atoi(argv[2]);
    double warm = atof(argv[3]), secs = atof(argv[4]);
    const char *hex = argv[5]; size_t flen = strlen(hex) / 2;
    unsigned char *frame = malloc(flen);
    for (size_t i = 0; i < flen; i++) sscanf(hex + 2 * i, "%2hhx", &frame[i]);
    struct conn *cs = calloc(n, sizeof *cs);
    double *lat = malloc(sizeof(double) * MAXLAT); long nl = 0, count = 0;
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {0}; a.sun_family = AF_UNIX;
        strncpy(a.sun_path, path, sizeof a.sun_path - 1);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        cs[i].fd = fd;
    }
    double t0 = now(), start = t0 + warm, end = start + secs;
    for (int i = 0; i < n; i++) {
        if (write(cs[i].fd, frame, flen) != (ssize_t)flen) { perror("write"); return 1; }
        cs[i].sent = now();
    }
    struct epoll_event evs[512];
    for (;;) {
        int k = epoll_wait(ep, evs, 512, 100);
        double t = now();
        if (t >= end) break;
        for (int e = 0; e < k; e++) {
            struct conn *c = &cs[evs[e].data.u32];
            ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                fprintf(stderr, "the server closed a connection\n");
                return 1;
            }
            c->len += r;
            int pos = 0, got = 0;
            while (c->len - pos >= 4) {
                unsigned char *h = c->buf + pos;
                unsigned int sz = (h[0] << 24) | (h[1] << 16) | (h[2] << 8) | h[3];
                if (c->len - pos < 4 + (int)sz) break;
                pos += 4 + sz; got++;
            }
            memmove(c->buf, c->buf + pos, c->len - pos); c->len -= pos;
            for (int g = 0; g < got; g++) {
                double done = now();
                if (done >= start) { count++; if (nl < MAXLAT) lat[nl++] = done - c->sent; }
                if (write(c->fd, frame, flen) != (ssize_t)flen) { perror("write"); return 1; }
                c->sent = done;
            }
        }
    }
    qsort(lat, nl, sizeof(double), cmp);
    double p50 = nl ? lat[nl / 2] : 0, p99 = nl ? lat[(long)(nl * 0.99)] : 0;
    printf("{\"count\": %ld, \"seconds\": %f, \"p50\": %.9f, \"p99\": %.9f}\n",
           count, secs, p50, p99);
    return 0;
}
"""


# -- the baseline server: minimal uvloop Protocol + a bare ticker -----------------------------
def baseline_server(path: str) -> None:
    """Serve pings on ``path`` and tick every INTERVAL; print ``<started> <lateness>`` per
    tick on stdout until SIGTERM."""
    import uvloop

    decoder = msgspec.msgpack.Decoder()
    encoder = msgspec.msgpack.Encoder()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buf = bytearray()

        def data_received(self, data: bytes) -> None:
            buf = self.buf
            buf += data
            out = []
            pos = 0
            while len(buf) - pos >= 4:
                end = pos + 4 + int.from_bytes(buf[pos : pos + 4], "big")
                if end > len(buf):
                    break
                req = decoder.decode(buf[pos + 4 : end])
                body = encoder.encode({"id": req["id"], "result": "pong"})
                out.append(len(body).to_bytes(4, "big") + body)
                pos = end
            del buf[:pos]
            if out:
                self.transport.write(b"".join(out))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_unix_server(Echo, path)
        print("ready", flush=True)

        async def ticker() -> None:
            deadline = time.monotonic() + INTERVAL
            while True:
                while (delay := deadline - time.monotonic()) > 0:  # uvloop may wake early
                    fut = loop.create_future()
                    handle = loop.call_later(delay, fut.set_result, None)
                    try:
                        await fut
                    finally:
                        handle.cancel()
                started = time.monotonic()
                print(f"{started:.6f} {started - deadline:.6f}", flush=True)
                deadline += INTERVAL
                while deadline < time.monotonic():
                    deadline += INTERVAL

        task = loop.create_task(ticker())
        await stop.wait()
        task.cancel()
        server.close()

    uvloop.run(main())


# -- load -------------------------------------------------------------------------------------
def _hex_frame() -> str:
    body = msgspec.msgpack.encode(PING)
    return (len(body).to_bytes(4, "big") + body).hex()


def build_loadgen(workdir: Path) -> Path | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    src = workdir / "loadgen.c"
    src.write_text(LOADGEN_C)
    exe = workdir / "loadgen"
    proc = subprocess.run(
        [gcc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        print(f"gcc failed, falling back to Python clients:\n{proc.stderr}", file=sys.stderr)
        return None
    return exe


def _py_client(path: str, conns: int, warm: float, secs: float, out: Any) -> None:
    """The fallback load: one process, ``conns`` connections, selectors."""
    import selectors
    import socket

    frame = bytes.fromhex(_hex_frame())
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [bytearray(), 0.0])
        socks.append(s)
    start = time.monotonic() + warm
    end = start + secs
    lat: list[float] = []
    for s in socks:
        s.send(frame)
        sel.get_key(s).data[1] = time.monotonic()
    while time.monotonic() < end:
        for key, _ in sel.select(0.1):
            s, state = key.fileobj, key.data
            state[0] += s.recv(65536)  # type: ignore[union-attr]
            buf = state[0]
            got = 0
            pos = 0
            while len(buf) - pos >= 4:
                n = int.from_bytes(buf[pos : pos + 4], "big")
                if len(buf) - pos < 4 + n:
                    break
                pos += 4 + n
                got += 1
            del buf[:pos]
            for _ in range(got):
                done = time.monotonic()
                if done >= start:
                    lat.append(done - state[1])
                s.send(frame)  # type: ignore[union-attr]
                state[1] = done
    out.put(lat)


def load(
    exe: Path | None, path: str, conns: int, secs: float, warm: float = 0.5
) -> dict[str, float]:
    """Hammer ``path`` with ``conns`` connections for ``secs`` (after ``warm``)."""
    if exe is not None:
        proc = subprocess.run(
            [str(exe), path, str(conns), str(warm), str(secs), _hex_frame()],
            capture_output=True,
            text=True,
            timeout=warm + secs + 30,
            check=True,
        )
        result: dict[str, float] = json.loads(proc.stdout)
        return result
    import multiprocessing

    procs = min(4, conns)
    queue: Any = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(
            target=_py_client,
            args=(path, conns // procs + (i < conns % procs), warm, secs, queue),
        )
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    lat = sorted(x for _ in workers for x in queue.get())
    for w in workers:
        w.join()
    n = len(lat)
    return {
        "count": n,
        "seconds": secs,
        "p50": lat[n // 2] if n else 0.0,
        "p99": lat[int(n * 0.99)] if n else 0.0,
    }


# -- the servers ------------------------------------------------------------------------------
class Baseline:
    def __init__(self, base: Path) -> None:
        self.path = str(base / "echo.sock")
        self.ticks: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.control", "--baseline-server", self.path],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the baseline server did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            started, late = line.split()
            self.ticks.append((float(started), float(late)))

    def lateness(self, since: float, until: float) -> list[float]:
        return [late for started, late in list(self.ticks) if since <= started <= until]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self._reader.join(5)


CONFIG = """
[agent]
interval = {interval}
[log]
level = "warning"
heartbeat = 0
[store]
enabled = false
[control]
max_connections = 128
{telemetry}
[sensors.system]
"""


class Agentd:
    def __init__(self, base: Path, telemetry: str = TELEMETRY_OFF) -> None:
        from agentd.control.client import Client

        cfg = base / "agentd.toml"
        cfg.write_text(CONFIG.format(interval=INTERVAL, telemetry=telemetry))
        run = base / "run"
        self.path = str(run / "agentd.sock")
        self.log = open(base / "agentd.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentd",
                "run",
                "--config",
                str(cfg),
                "--state-dir",
                str(base / "state"),
                "--runtime-dir",
                str(run),
                "--log-level",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client(self.path, timeout=2) as c:
                    c.call("ping")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("agentd did not start") from None
                time.sleep(0.05)
        # one watcher collects each tick's start and lateness (a light load of its own)
        self.ticks: list[tuple[float, float]] = []
        self._watch = Client(self.path, timeout=None)
        rid = self._watch.send("watch", {"events": ["tick"]})
        self._watch.result(self._watch.wait(rid))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for m in self._watch.events():
                if m.event == "tick" and not isinstance(m.data, msgspec.UnsetType):
                    tick = msgspec.msgpack.decode(m.data)  # the client leaves data raw
                    self.ticks.append((tick["started"], tick["lateness"]))

    def lateness(self, since: float, until: float) -> list[float]:
        return [late for started, late in list(self.ticks) if since <= started <= until]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        self._watch.close()
        self.log.close()


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(server: Agentd | Baseline, exe: Path | None, quick: bool) -> dict[str, float]:
    short, long = (1.0, 3.0) if quick else (3.0, 10.0)
    out: dict[str, float] = {}
    one = load(exe, server.path, 1, short)
    out["p50"], out["p99"], out["rps1"] = one["p50"], one["p99"], one["count"] / one["seconds"]
    ten = load(exe, server.path, 10, short)
    out["rps10"] = ten["count"] / ten["seconds"]
    t0 = time.monotonic() + 0.5  # after the warm-up
    hundred = load(exe, server.path, 100, long)
    t1 = time.monotonic()
    out["rps100"] = hundred["count"] / hundred["seconds"]
    late = server.lateness(t0, t1)
    out["late_p50"], out["late_p99"], out["late_n"] = _p(late, 0.5), _p(late, 0.99), len(late)
    out["late_max"] = max(late, default=float("nan"))
    time.sleep(0.5 if quick else 2.0)  # idle, for comparison
    out["idle_p99"] = _p(server.lateness(t1 + 0.2, time.monotonic()), 0.99)
    return out


PIPELINE_CONNS = 4
PIPELINE_DEPTH = 16
PIPELINE_CMD = ("plugin", {"name": "system"})


def measure_pipeline(agentd: Agentd, quick: bool) -> dict[str, float]:
    """Tick lateness idle, then under the pipelined ``plugin`` flood: same daemon, same run."""
    idle_s, load_s = (3.0, 5.0) if quick else (8.0, 12.0)
    t0 = time.monotonic()
    time.sleep(idle_s)
    idle = agentd.lateness(t0, time.monotonic())
    cmd, args = PIPELINE_CMD
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.flood",
            agentd.path,
            str(PIPELINE_CONNS),
            str(PIPELINE_DEPTH),
            str(load_s),
            cmd,
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        timeout=load_s + 60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    t2 = time.monotonic()
    loaded = agentd.lateness(t2 - load_s + 0.5, t2)
    answers = json.loads(proc.stdout)["answers"]
    return {
        "idle_p99": _p(idle, 0.99),
        "idle_n": len(idle),
        "load_p99": _p(loaded, 0.99),
        "load_p50": _p(loaded, 0.5),
        "load_max": max(loaded, default=float("nan")),
        "load_n": len(loaded),
        "expected_n": (load_s - 0.5) / INTERVAL,
        "rps": answers / load_s,
    }


def pipeline_figure(m: dict[str, float]) -> Figure:
    ours, idle = m["load_p99"] * 1e3, m["idle_p99"] * 1e3
    ratio = ours / idle if idle else None
    return Figure(
        "control: tick lateness p99, 4 conns pipelining `plugin`",
        ours,
        idle,
        "ms",
        "<= 2 ms and <= 2x idle",
        ours <= 2.0 and ratio is not None and ratio <= 2.0,
        ratio,
        note=(
            f"baseline: the same daemon idle ({m['idle_n']:.0f} ticks); "
            f"{m['load_n']:.0f} of ~{m['expected_n']:.0f} ticks under load, p50 "
            f"{m['load_p50'] * 1e3:.2f} ms, max {m['load_max'] * 1e3:.2f} ms; "
            f"{m['rps']:.0f} plugin replies/s"
        ),
    )


def run_pipeline(quick: bool = False) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="agb", dir="/tmp") as tmp:
        agentd = Agentd(Path(tmp))
        try:
            return [pipeline_figure(measure_pipeline(agentd, quick))]
        finally:
            agentd.close()


def run(quick: bool = False) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="agb", dir="/tmp") as tmp:
        base = Path(tmp)
        exe = build_loadgen(base)
        client = "C client (gcc)" if exe else "Python client processes (no gcc: may limit)"
        (base / "a").mkdir()
        (base / "b").mkdir()
        agentd = Agentd(base / "a")
        try:
            ours = measure(agentd, exe, quick)
            piped = measure_pipeline(agentd, quick)
        finally:
            agentd.close()
        (base / "c").mkdir()
        traced = Agentd(base / "c", telemetry="")  # the default: a span per request
        try:
            with_spans = load(exe, traced.path, 1, 1.0 if quick else 3.0)
        finally:
            traced.close()
        baseline = Baseline(base / "b")
        try:
            theirs = measure(baseline, exe, quick)
        finally:
            baseline.close()
    us = 1e6
    note = f"load from a {client}; both servers tick every {INTERVAL * 1e3:.0f} ms"
    return [
        ratio_figure(
            "control: ping RTT p50, 1 conn", ours["p50"] * us, theirs["p50"] * us, "us", target="-"
        ),
        ratio_figure(
            "control: ping RTT p99, 1 conn",
            ours["p99"] * us,
            theirs["p99"] * us,
            "us",
            target="<= 1.5x",
            max_ratio=1.5,
            note=note,
        ),
        ratio_figure(
            "control: ping RTT p50, 1 conn, telemetry on",
            with_spans["p50"] * us,
            theirs["p50"] * us,
            "us",
            target="-",
            note="the default config: telemetry makes a span per control request",
        ),
        ratio_figure("control: req/s, 1 conn", ours["rps1"], theirs["rps1"], "req/s", target="-"),
        ratio_figure(
            "control: req/s, 10 conns", ours["rps10"], theirs["rps10"], "req/s", target="-"
        ),
        ratio_figure(
            "control: req/s, 100 conns",
            ours["rps100"],
            theirs["rps100"],
            "req/s",
            target=">= 0.5x",
            min_ratio=0.5,
        ),
        Figure(
            "control: tick lateness p99, 100 conns hammering",
            ours["late_p99"] * 1e3,
            theirs["late_p99"] * 1e3,
            "ms",
            "<= 2 ms",
            ours["late_p99"] * 1e3 <= 2.0,
            ours["late_p99"] / theirs["late_p99"] if theirs["late_p99"] else None,
            note=(
                f"{ours['late_n']:.0f} vs {theirs['late_n']:.0f} ticks under load; p50 "
                f"{ours['late_p50'] * 1e3:.2f} vs {theirs['late_p50'] * 1e3:.2f} ms, max "
                f"{ours['late_max'] * 1e3:.2f} vs {theirs['late_max'] * 1e3:.2f} ms; idle p99 "
                f"{ours['idle_p99'] * 1e3:.2f} vs {theirs['idle_p99'] * 1e3:.2f} ms"
            ),
        ),
        pipeline_figure(piped),
    ]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline-server":
        baseline_server(sys.argv[2])
        return
    quick = "--quick" in sys.argv
    if "--pipeline" in sys.argv:
        print_table(run_pipeline(quick=quick))
        return
    print_table(run(quick=quick))


if __name__ == "__main__":
    main()
