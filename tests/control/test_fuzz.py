"""10 000 random and mutated frames against a real daemon: afterwards it still answers ping, its
loop kept ticking, and its RSS stayed within a bound."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.control.helpers import TESTPLUGINS, Agent, Raw, config, frame, rss_of, ticks
from tests.utils import short_tmpdir, wait_for

BATCHES = 100
PER_BATCH = 100  # 100 x 100 = 10 000 frames
#: growth allowed over the run: per-connection buffers are bounded and freed; no leak may
#: accumulate 10 000 frames' worth of state
RSS_BOUND = 16 * 1024 * 1024

# commands that change nothing lasting (pause/resume/reload/watch would change what we check)
COMMANDS = [
    "ping",
    "hello",
    "status",
    "plugins",
    "plugin",
    "tick",
    "act",
    "sessions.get",
    "sessions.list",
    "journal.actions",
    "journal.observations",
    "flush",
]

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63), children, max_size=5)
    ),
    max_leaves=12,
)

ids = st.integers(min_value=0, max_value=2**64 - 1) | st.text(max_size=8)
requests = st.fixed_dictionaries(
    {"id": ids, "cmd": st.sampled_from(COMMANDS) | st.text(max_size=12)},
    optional={
        "args": st.dictionaries(
            st.sampled_from(["name", "id", "limit", "since", "actuator", "action", "params"])
            | st.text(max_size=6),
            json_like,
            max_size=4,
        )
        | json_like,
        "traceparent": st.text(max_size=60) | json_like,
    },
)
_enc = msgspec.msgpack.Encoder()


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["request", "mutated", "random", "value"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "value":
        return _enc.encode(draw(json_like))
    body = _enc.encode(draw(requests))
    if kind == "mutated" and body:
        data = bytearray(body)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            i = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "cut":
                del data[i:]
            else:
                data[i:i] = draw(st.binary(min_size=1, max_size=8))
        return bytes(data)
    return body


@pytest.fixture(scope="module")
def fuzz_agent() -> Iterator[Agent]:
    with short_tmpdir() as base:
        cfg = config(base, interval=0.1, control="max_frame = 65536")
        a = Agent(base, cfg, argv=TESTPLUGINS, log_level="info")
        with a:
            a.ready()
            yield a
            assert a.stop() == 0


class Stats:
    frames = 0
    answered = 0
    closed = 0


def _send_batch(agent: Agent, batch: list[bytes], tail: bytes) -> None:
    """Send the batch pipelined plus a sync ping, then read one answer per frame (slow commands
    may be answered after the ping, so count rather than stop at it)."""
    with Raw(agent.socket, timeout=30) as raw:
        raw.send(b"".join(frame(b) for b in batch) + frame({"id": "sync", "cmd": "ping"}))
        synced = False
        answered = 0
        while not (synced and answered == len(batch)):
            msg = raw.read()
            if msg is None:
                Stats.closed += 1
                break
            if msg.get("id") == "sync" and msg.get("result") == "pong" and not synced:
                synced = True
            else:
                answered += 1
        Stats.answered += answered
        # trailing garbage: a bogus header, a truncated frame or a too-large announcement
        if tail:
            try:
                raw.send(tail)
            except (BrokenPipeError, ConnectionResetError):
                Stats.closed += 1
    Stats.frames += len(batch)


def _mutate(seed: bytes, rnd: random.Random) -> bytes:
    """A cheap mutation of a generated frame: bit flips, cuts, inserted or spliced bytes."""
    data = bytearray(seed)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.choice(["flip", "cut", "insert", "splice", "random"])
        i = rnd.randrange(len(data) + 1)
        if op == "flip" and data:
            data[min(i, len(data) - 1)] ^= 1 << rnd.randrange(8)
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = rnd.randbytes(rnd.randint(1, 8))
        elif op == "splice":
            data[i:] = seed[rnd.randrange(len(seed) + 1) :]
        else:
            data = bytearray(rnd.randbytes(rnd.randint(0, 64)))
    return bytes(data)


SEEDS = 10  # generated by hypothesis per batch; the other 90 frames are mutations of them
UNKNOWN_PER_BATCH = 2  # of those 90: well-formed requests for a command that does not exist


@settings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    # a fixed seed: the same 10 000 frames every run, so the counts below cannot flake (they
    # hovered around the bound with a fresh seed each run)
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seeds=st.lists(bodies(), min_size=SEEDS, max_size=SEEDS),
    rnd=st.randoms(use_true_random=False),
    tail=st.binary(max_size=12),
)
def _fuzz(agent: Agent, seeds: list[bytes], rnd: random.Random, tail: bytes) -> None:
    # two well-formed requests for commands that do not exist in every batch: how many of the
    # random ones survive mutation depends on the draw (it sat at the bound below, 82-149)
    unknown = [
        _enc.encode({"id": rnd.randrange(2**32), "cmd": f"no-such-{rnd.randrange(10**6)}"})
        for _ in range(UNKNOWN_PER_BATCH)
    ]
    mutated = [_mutate(rnd.choice(seeds), rnd) for _ in range(PER_BATCH - SEEDS - len(unknown))]
    batch = seeds + unknown + mutated
    _send_batch(agent, batch, tail)


def test_fuzzed_frames_do_not_hurt_the_daemon(fuzz_agent: Agent) -> None:
    agent = fuzz_agent
    rss_before = rss_of(agent.pid)
    ticks_before = ticks(agent)
    t0 = time.monotonic()
    _fuzz(agent)
    elapsed = time.monotonic() - t0
    assert Stats.frames == BATCHES * PER_BATCH
    # every frame got an answer (random bodies included: framing was intact)
    assert Stats.answered == Stats.frames, (Stats.answered, Stats.frames, Stats.closed)
    with Raw(agent.socket) as raw:
        assert raw.call("ping") == "pong"
        status: dict[str, Any] = raw.call("status")
    ticked = status["loop"]["ticks"] - ticks_before
    # the loop kept ticking at 10/s all along (manual `tick` commands only add to this)
    assert ticked >= 0.5 * elapsed / 0.1, (ticked, elapsed)
    growth = rss_of(agent.pid) - rss_before
    assert growth < RSS_BOUND, f"RSS grew by {growth / 1e6:.1f} MB"
    errors = status["control"]["errors"]
    assert errors.get("bad_request", 0) > 1000
    assert errors.get("unknown_command", 0) > 100
    # every fuzzing connection was cleaned up (the last close may still be on its way)
    wait_for(lambda: agent.call("status")["control"]["connections"] == 1, 10, what="cleanup")
    log = agent.log()
    assert "Traceback" not in log
    assert "internal" not in errors, (errors, log[-3000:])
    print(
        f"fuzz: {Stats.frames} frames in {elapsed:.1f}s, {ticked} ticks, "
        f"RSS {rss_before / 1e6:.1f} -> {(rss_before + growth) / 1e6:.1f} MB, errors {errors}"
    )


def test_garbage_on_many_connections_at_once(fuzz_agent: Agent) -> None:
    """Connections that send half a frame and vanish, many at once: each is counted and
    cleaned up."""
    before = fuzz_agent.call("status")["control"]["errors"].get("bad_frame", 0)
    socks = []
    for i in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(fuzz_agent.socket))
        s.sendall((1000 + i).to_bytes(4, "big") + b"partial")
        socks.append(s)
    for s in socks:
        s.close()

    def settled() -> dict[str, Any] | None:
        control: dict[str, Any] = fuzz_agent.call("status")["control"]
        done = control["errors"].get("bad_frame", 0) - before >= 50
        return control if done and control["connections"] == 1 else None

    control = wait_for(settled, 10, what="the half frames to be counted")
    assert control["errors"]["bad_frame"] - before == 50
