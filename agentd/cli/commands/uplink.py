"""agentctl uplink: per uplink, its link (connected since, protocol, reconnects, health), and
per stream the durable cursor, the backlog (rows, bytes, age of the oldest unsent row), what is
in flight and the delivery counters. ``--json`` prints the `UplinkStatus` list as sent."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from agentd.cli import render
from agentd.cli.agentctl import EXIT_OK, Subcommand, show
from agentd.cli.render import Output
from agentd.control.client import Client
from agentd.model import UplinkStatus

__all__ = ["link_line", "summary_line", "uplink"]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one uplink (default: all)")


def link_line(u: UplinkStatus, now: float | None = None) -> str:
    """``fleet: connected since 12:00:01 (3m ago), mqtt5, 2 reconnects; ok``."""
    now = time.time() if now is None else now
    if u.since is None:
        when = "never connected" if not u.connected else "connected"
    else:
        ago = render.duration(max(0.0, now - u.since))
        when = f"{'connected' if u.connected else u.phase} since {render.when(u.since)} ({ago} ago)"
    proto = f", {u.protocol}" if u.protocol else ""
    health = "ok" if u.health == "ok" else f"DEGRADED: {u.reason or u.last_error or '?'}"
    return f"{u.name}: {when}{proto}, {u.reconnects} reconnects, node {u.node}; {health}"


def summary_line(uplinks: Sequence[UplinkStatus]) -> str:
    """The one line of ``agentctl status``: each uplink's phase and total backlog."""
    parts = []
    for u in uplinks:
        backlog = sum(s.backlog for s in u.streams)
        state = u.phase if u.health == "ok" else f"{u.phase}, degraded"
        parts.append(f"{u.name} {state}, backlog {backlog} rows")
    return "; ".join(parts) if parts else "none"


def table(out: Output, uplinks: Sequence[UplinkStatus]) -> None:
    if not uplinks:
        out.line("no uplinks configured")
        return
    for i, u in enumerate(uplinks):
        if i:
            out.line()
        out.line(link_line(u))
        if u.last_error and u.health == "ok":
            out.line(f"  last error: {render.clip(u.last_error, 100)}")
        out.table(
            [
                "STREAM",
                "ACKED",
                "HEAD",
                "BACKLOG",
                "BYTES",
                "OLDEST",
                "IN FLIGHT",
                "DELIVERED",
                "DUPLICATES",
                "GAP ROWS",
                "LAST ERROR",
            ],
            [
                (
                    s.stream,
                    s.acked,
                    s.head,
                    s.backlog,
                    render.size(s.backlog_bytes),
                    "-" if s.oldest_age is None else render.duration(s.oldest_age),
                    s.in_flight,
                    s.delivered,
                    s.duplicates,
                    s.gap_rows,
                    render.clip(s.last_error or "-", 40),
                )
                for s in u.streams
            ],
        )


def _uplink(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("uplink", {"name": args.name} if args.name else {})
    show(out, raw, list[UplinkStatus], lambda r: table(out, r))
    return EXIT_OK


uplink = Subcommand(_args, _uplink)
