"""Load: 64 clients pipelining pings while the loop ticks every 50 ms; a watch client that never
reads is dropped without touching the loop."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from tests.control.helpers import TESTPLUGINS, Agent, Raw, config, frame
from tests.utils import wait_for

CLIENTS = 64
ROUNDS = 20
DEPTH = 25  # requests in flight per client (one write each round)


def _client(path: Path, n: int, results: list[Any]) -> None:
    try:
        with Raw(path, timeout=60) as raw:
            answered = 0
            for r in range(ROUNDS):
                base = (n * ROUNDS + r) * DEPTH
                raw.send(b"".join(frame({"id": base + i, "cmd": "ping"}) for i in range(DEPTH)))
                for i in range(DEPTH):
                    msg = raw.read()
                    assert msg == {"id": base + i, "result": "pong"}, msg
                    answered += 1
            results[n] = answered
    except BaseException as exc:  # reported by the test thread
        results[n] = exc


def test_64_clients_pipelining_while_ticking(short_tmp: Path) -> None:
    control = "max_connections = 80"
    cfg = config(short_tmp, interval=0.05, control=control)
    with Agent(short_tmp, cfg, argv=TESTPLUGINS, log_level="info") as agent:
        agent.ready()
        before = agent.call("status")["loop"]
        results: list[Any] = [None] * CLIENTS
        threads = [
            threading.Thread(target=_client, args=(agent.socket, n, results), name=f"client-{n}")
            for n in range(CLIENTS)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        errors = [r for r in results if not isinstance(r, int)]
        assert not errors, errors[:3]
        assert sum(results) == CLIENTS * ROUNDS * DEPTH  # every request answered
        status = agent.call("status")
        loop = status["loop"]
        ticked = loop["ticks"] - before["ticks"]
        assert ticked > 0  # the loop kept ticking (lateness is recorded, not asserted)
        assert status["control"]["errors"] == {}
        print(
            f"\n{CLIENTS} clients x {ROUNDS * DEPTH} pings in {elapsed:.2f}s "
            f"({CLIENTS * ROUNDS * DEPTH / elapsed:.0f} req/s through threads of one process); "
            f"ticks {ticked} (expected {elapsed / 0.05:.0f}), lateness p50 "
            f"{loop['lateness_p50'] * 1e3:.2f} ms p99 {loop['lateness_p99'] * 1e3:.2f} ms max "
            f"{loop['lateness_max'] * 1e3:.2f} ms, overruns {loop['overruns']}, skipped "
            f"{loop['skipped']}, tick holds {status['control']['tick_holds']}"
        )
        assert agent.stop() == 0


def test_watch_client_that_never_reads_is_dropped(short_tmp: Path) -> None:
    control = "watch_buffer = 5"
    cfg = config(short_tmp, interval=0.02, control=control)
    with Agent(short_tmp, cfg, argv=TESTPLUGINS, log_level="info") as agent:
        agent.ready()
        seen: list[int] = []
        stop = threading.Event()

        def read_events(raw: Raw) -> None:
            while not stop.is_set():
                msg = raw.read()
                if msg is None:
                    return
                if msg.get("event") == "tick":
                    seen.append(msg["data"]["tick"])

        with Raw(agent.socket) as reader:
            reader.request("watch", {"events": ["tick"]})
            assert reader.read() == {"id": 1, "result": {"watching": ["tick"], "buffer": 5}}
            thread = threading.Thread(target=read_events, args=(reader,), name="watch-reader")
            thread.start()
            stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                stuck.connect(str(agent.socket))
                stuck.sendall(frame({"id": 1, "cmd": "watch", "args": {}}))
                start = agent.call("status")
                dropped = wait_for(
                    lambda: (c := agent.call("status"))["control"]["watch_dropped"] >= 1 and c,
                    60,
                    interval=0.2,
                    what="the stuck watcher to be dropped",
                )
                # the stuck client's connection was cut: it reads what was queued, then EOF
                stuck.settimeout(10)
                total = 0
                while True:
                    try:
                        data = stuck.recv(1 << 20)
                    except ConnectionResetError:
                        break
                    if not data:
                        break
                    total += len(data)
                assert total > 0
                n = len(seen)
                wait_for(lambda: len(seen) >= n + 10, 10, what="more events for the reader")
            finally:
                stuck.close()
                stop.set()
                thread.join(10)
        # the reading watcher kept getting every tick while the stuck one was dropped
        assert seen == list(range(seen[0], seen[0] + len(seen)))
        assert dropped["control"]["watch_dropped"] == 1
        assert dropped["control"]["watchers"] == 1
        assert "dropped a watch client" in agent.log()
        ticked = dropped["loop"]["ticks"] - start["loop"]["ticks"]
        elapsed = dropped["uptime"] - start["uptime"]
        assert ticked > 0
        print(
            f"\nstuck watcher dropped after {elapsed:.1f}s and {ticked} ticks "
            f"(expected {elapsed / 0.02:.0f}); lateness p99 "
            f"{dropped['loop']['lateness_p99'] * 1e3:.2f} ms, "
            f"overruns {dropped['loop']['overruns']}"
        )
        assert agent.call("ping") == "pong"
        assert agent.stop() == 0
