"""agentctl tick, pause, resume, reload, act and watch (the perception loop's commands)."""

from __future__ import annotations

import argparse
import json
import sys

import msgspec

from agentd.cli import render
from agentd.cli.agentctl import EXIT_OK, EXIT_USAGE, Failed, Subcommand, show
from agentd.cli.commands.store import drop_none, json_or_str
from agentd.cli.render import Output
from agentd.control.client import Client
from agentd.control.protocol import NIL, LoopChange, Reloaded, WatchStarted
from agentd.model import ActionResult, TickReport

__all__ = ["act", "pause", "reload", "resume", "tick", "watch"]


def _none(p: argparse.ArgumentParser) -> None:
    pass


def _tick(client: Client, args: argparse.Namespace, out: Output) -> int:
    show(out, client.call_raw("tick"), TickReport, lambda r: render.tick_report(out, r))
    return EXIT_OK


def _pause(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("pause")
    show(out, raw, LoopChange, lambda r: out.line("paused" if r.changed else "already paused"))
    return EXIT_OK


def _resume(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("resume")
    show(out, raw, LoopChange, lambda r: out.line("resumed" if r.changed else "already running"))
    return EXIT_OK


def _reload(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("reload")
    show(out, raw, Reloaded, lambda r: out.line(f"reloaded (generation {r.generation})"))
    return EXIT_OK


def _act_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("actuator")
    p.add_argument("action")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter (VALUE is JSON if it parses, else a string); repeatable",
    )
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--key", help="idempotency key")


def _act(client: Client, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, object] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"agentctl act: --param expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        params[key] = json_or_str(value)
    request = drop_none(
        actuator=args.actuator,
        action=args.action,
        params=params,
        priority=args.priority,
        key=args.key,
    )
    raw = client.call_raw("act", request)
    r = show(out, raw, ActionResult, lambda r: out.line(render.action_line(r)))
    if r.status != "ok":
        raise Failed(r.error or r.status)
    return EXIT_OK


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--events",
        default="tick,action,state",
        help="comma-separated kinds: tick, action, state (default: all)",
    )


def _watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    kinds = [k.strip() for k in args.events.split(",") if k.strip()]
    rid = client.send("watch", {"events": kinds})
    # raises on a refusal; the reply itself says nothing a person needs
    msgspec.msgpack.decode(client.result_raw(client.wait(rid)), type=WatchStarted)
    sys.stdout.flush()
    for message in client.events():
        if message.id != rid or not isinstance(message.event, str):
            continue
        data = NIL if isinstance(message.data, msgspec.UnsetType) else message.data
        if out.json:
            plain = msgspec.msgpack.decode(data)
            out.line(json.dumps({"event": message.event, "data": plain}, default=str))
        else:
            out.line(render.event_line(message.event, data))
        sys.stdout.flush()
    return EXIT_OK


tick = Subcommand(_none, _tick)
pause = Subcommand(_none, _pause)
resume = Subcommand(_none, _resume)
reload = Subcommand(_none, _reload)
act = Subcommand(_act_args, _act)
watch = Subcommand(_watch_args, _watch)
