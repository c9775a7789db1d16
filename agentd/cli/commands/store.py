"""agentctl sessions, journal and flush (the store's commands)."""

from __future__ import annotations

import argparse
import json
import time

from agentd.cli import render
from agentd.cli.agentctl import EXIT_OK, Subcommand, common_options, show
from agentd.cli.render import Output
from agentd.control.client import Client
from agentd.control.protocol import Deleted, Flushed
from agentd.model import ActionResult, Observation, Session

__all__ = ["drop_none", "flush", "journal", "json_or_str", "sessions", "time_arg"]


def drop_none(**kw: object) -> dict[str, object]:
    return {k: v for k, v in kw.items() if v is not None}


def json_or_str(text: str) -> object:
    try:
        parsed: object = json.loads(text)
    except ValueError:
        return text
    return parsed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def time_arg(text: str) -> float:
    """Unix time, an ISO 8601 time, or an age ago (``90s``, ``10m``, ``2h``, ``1d``)."""
    t = text.strip()
    if t and t[-1] in _UNITS:
        try:
            return time.time() - float(t[:-1]) * _UNITS[t[-1]]
        except ValueError:
            pass
    try:
        return float(t)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time (use a Unix time, an ISO time or an age like 10m)"
        ) from None


# -- sessions --------------------------------------------------------------------------------
def _sessions_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="op", metavar="OP", required=True)
    common = common_options()
    ls = sub.add_parser("list", help="list sessions", parents=[common])
    ls.add_argument("--prefix", default="", help="only ids starting with this")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--after", help="page: the last id of the previous page")
    get = sub.add_parser("get", help="show one session", parents=[common])
    get.add_argument("id")
    put = sub.add_parser("put", help="create or replace a session", parents=[common])
    put.add_argument("id")
    put.add_argument("state", help="the state as JSON (a bare word is a string)")
    put.add_argument("--expected-version", type=int, help="compare-and-set (0: must not exist)")
    put.add_argument("--ttl", type=float, metavar="SECONDS", help="expire after this long")
    delete = sub.add_parser("delete", help="remove a session", parents=[common])
    delete.add_argument("id")


def _sessions(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.op == "list":
        query = drop_none(prefix=args.prefix, limit=args.limit, after=args.after)
        raw = client.call_raw("sessions.list", query)
        show(out, raw, list[Session], lambda r: render.sessions_table(out, r))
    elif args.op == "get":
        raw = client.call_raw("sessions.get", {"id": args.id})
        show(out, raw, Session, lambda s: render.session(out, s))
    elif args.op == "put":
        put_args = drop_none(
            id=args.id,
            state=json_or_str(args.state),
            expected_version=args.expected_version,
            ttl=args.ttl,
        )
        raw = client.call_raw("sessions.put", put_args)
        show(out, raw, Session, lambda s: out.line(f"stored session {s.id} (version {s.version})"))
    else:
        raw = client.call_raw("sessions.delete", {"id": args.id})
        show(out, raw, Deleted, lambda r: out.line(f"deleted session {r.deleted}"))
    return EXIT_OK


# -- journals --------------------------------------------------------------------------------
def _journal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("journal", choices=["actions", "observations"])
    p.add_argument("--since", type=time_arg, help="Unix time, ISO time, or an age: 10m, 2h, 1d")
    p.add_argument("--until", type=time_arg, help="same forms as --since")
    p.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    p.add_argument("--tick-from", type=int, help="observations: first tick")
    p.add_argument("--tick-to", type=int, help="observations: last tick")


def _journal(client: Client, args: argparse.Namespace, out: Output) -> int:
    query = drop_none(since=args.since, until=args.until, limit=args.limit)
    if args.journal == "observations":
        query.update(drop_none(tick_from=args.tick_from, tick_to=args.tick_to))
        raw = client.call_raw("journal.observations", query)
        show(out, raw, list[Observation], lambda r: render.observations_table(out, r))
    else:
        raw = client.call_raw("journal.actions", query)
        show(out, raw, list[ActionResult], lambda r: render.action_table(out, r))
    return EXIT_OK


def _flush(client: Client, args: argparse.Namespace, out: Output) -> int:
    show(out, client.call_raw("flush"), Flushed, lambda r: out.line("flushed"))
    return EXIT_OK


def _none(p: argparse.ArgumentParser) -> None:
    pass


sessions = Subcommand(_sessions_args, _sessions)
journal = Subcommand(_journal_args, _journal)
flush = Subcommand(_none, _flush)
