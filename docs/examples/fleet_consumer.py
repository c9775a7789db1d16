#!/usr/bin/env python3
"""A small fleet-side consumer of agentd's uplink (docs/uplink.md): subscribes, decodes the
envelopes and checks completeness: for every node, epoch and stream, the ids received plus
the ids reported in gap records must be exactly 1..committed.

    python fleet_consumer.py --url mqtt://broker:1883 --node gw-0042 --expect observations=5000
    python fleet_consumer.py --url mqtt://broker:1883 --ack        # end_to_end watermarks

Needs paho-mqtt 2.x and msgspec. It is an example: a real backend writes the rows to its
database and publishes the ack only for what it committed there.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

STREAMS = ("observations", "actions", "events")


@dataclass
class Ledger:
    """What one (node, epoch, stream) sent: ids received, ids reported lost, duplicates."""

    received: set[int] = field(default_factory=set)
    gaps: list[tuple[int, int, str]] = field(default_factory=list)
    duplicates: int = 0
    #: rows as decoded, by id (the last copy wins; copies of one id are identical)
    rows: dict[int, Any] = field(default_factory=dict)

    def covered(self) -> set[int]:
        out = set(self.received)
        for lo, hi, _ in self.gaps:
            out.update(range(lo, hi + 1))
        return out

    def watermark(self) -> int:
        """The highest id n such that every id 1..n was received or reported lost."""
        covered = self.covered()
        n = 0
        while n + 1 in covered:
            n += 1
        return n

    def gap_rows(self) -> int:
        return sum(hi - lo + 1 for lo, hi, _ in self.gaps)

    def missing(self, committed: int) -> list[int]:
        covered = self.covered()
        return [i for i in range(1, committed + 1) if i not in covered]


class Completeness:
    """Feed it every message on ``<prefix>/<node>/<stream>``; ask what is missing."""

    def __init__(self) -> None:
        self.ledgers: dict[tuple[str, str, str], Ledger] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def add(self, topic: str, payload: bytes) -> None:
        env = decode(payload)
        kind = topic.rsplit("/", 1)[-1]
        with self.lock:
            if kind == "status":
                self.status[env["node"]] = env
                return
            if kind not in STREAMS or env.get("v") != 1:
                return
            key = (env["node"], env["epoch"], env["stream"])
            ledger = self.ledgers.setdefault(key, Ledger())
            if env["kind"] == "gap":
                ledger.gaps.append((env["from"], env["to"], env["reason"]))
                return
            ids = [row[0] for row in env["rows"]]
            # the envelope's promise: exactly the contiguous ids first..last
            assert ids == list(range(env["first"], env["last"] + 1)), "not contiguous"
            for row in env["rows"]:
                if row[0] in ledger.received:
                    ledger.duplicates += 1
                ledger.received.add(row[0])
                ledger.rows[row[0]] = row[4]

    def ledger(self, node: str, stream: str, epoch: str | None = None) -> Ledger:
        with self.lock:
            for (n, e, s), ledger in self.ledgers.items():
                if n == node and s == stream and (epoch is None or e == epoch):
                    return ledger
        return Ledger()

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {
                f"{n}/{e[:8]}/{s}": {
                    "received": len(x.received),
                    "gap_rows": x.gap_rows(),
                    "duplicates": x.duplicates,
                    "watermark": x.watermark(),
                }
                for (n, e, s), x in sorted(self.ledgers.items())
            }


def decode(payload: bytes) -> dict[str, Any]:
    """msgpack (the default format) or JSON (``format = "json"``)."""
    try:
        out = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        out = msgspec.json.decode(payload)
    if not isinstance(out, dict):
        raise TypeError("not an envelope")
    return out


def main(argv: list[str] | None = None) -> int:
    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--prefix", default="agentd/v1")
    p.add_argument("--node", default="+", help="one node, or + for all")
    p.add_argument("--client-id", default="fleet-consumer")
    p.add_argument("--ack", action="store_true", help="publish watermarks (end_to_end)")
    p.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="STREAM=N",
        help="exit 0 once ids 1..N of STREAM are all received or reported lost",
    )
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    host, _, port = args.url.removeprefix("mqtt://").partition(":")
    expect = {k: int(v) for k, v in (e.split("=", 1) for e in args.expect)}
    book = Completeness()

    def on_connect(client: paho.Client, *_: Any) -> None:
        client.subscribe(f"{args.prefix}/{args.node}/+", qos=1)

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if not msg.topic.endswith("/ack"):
            book.add(msg.topic, bytes(msg.payload))

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_connect = on_connect
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 86400  # a persistent session: the broker queues for us
    client.connect(host, int(port or 1883), keepalive=30, clean_start=False, properties=props)
    client.loop_start()
    deadline = time.monotonic() + args.timeout
    done = False
    try:
        while time.monotonic() < deadline and not done:
            time.sleep(0.5)
            if args.ack:
                publish_acks(client, args.prefix, book)
            done = bool(expect) and all(
                not book.ledger(node, stream).missing(n)
                for node in {k[0] for k in book.ledgers} or {"?"}
                for stream, n in expect.items()
            )
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps(book.report(), indent=1))
    return 0 if done or not expect else 1


def publish_acks(client: Any, prefix: str, book: Completeness) -> None:
    """Retained, so agentd reads the latest one when it (re)connects."""
    by_node: dict[tuple[str, str], dict[str, int]] = {}
    with book.lock:
        for (node, epoch, stream), ledger in book.ledgers.items():
            by_node.setdefault((node, epoch), {})[stream] = ledger.watermark()
    for (node, epoch), marks in by_node.items():
        payload = msgspec.msgpack.encode({"epoch": epoch, **marks})
        client.publish(f"{prefix}/{node}/ack", payload, qos=1, retain=True)


if __name__ == "__main__":
    sys.exit(main())
