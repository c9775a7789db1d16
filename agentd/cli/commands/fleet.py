"""agentctl commands: the recent commands from the fleet (MQTT) with their outcomes;
agentctl config history: the config versions the fleet pushed and what became of each
(probation, committed, rolled back and why, refused, abandoned by a restart). ``--json`` prints
the `FleetCommand` / `ConfigVersion` lists as sent."""

from __future__ import annotations

import argparse

from agentd.cli import render
from agentd.cli.agentctl import EXIT_OK, EXIT_USAGE, Subcommand, show
from agentd.cli.render import Output
from agentd.control.client import Client
from agentd.model import ConfigVersion, FleetCommand

__all__ = ["commands", "config"]


def _no_args(p: argparse.ArgumentParser) -> None:
    del p


def _commands(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("commands", {})

    def human(rows: list[FleetCommand]) -> None:
        if not rows:
            out.line("no commands from the fleet yet")
            return
        out.table(
            ["RECEIVED", "ID", "VERB", "SENDER", "OUTCOME", "MESSAGE"],
            [
                (
                    render.when(r.received),
                    r.id or "-",
                    r.verb,
                    r.sender,
                    ("ok" if r.ok else r.code or "error") + (" (duplicate)" if r.duplicate else ""),
                    render.clip(
                        (r.message or "") + (f" [reply: {r.reply_error}]" if r.reply_error else ""),
                        70,
                    )
                    or "-",
                )
                for r in rows
            ],
        )

    show(out, raw, list[FleetCommand], human)
    return EXIT_OK


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["history"], help="history: the versions from the fleet")


def _config(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.what != "history":  # pragma: no cover - argparse's choices
        return EXIT_USAGE
    raw = client.call_raw("config_history", {})

    def human(rows: list[ConfigVersion]) -> None:
        if not rows:
            out.line("no config from the fleet yet")
            return
        out.table(
            ["AT", "VERSION", "OUTCOME", "ID", "SENDER", "REASON"],
            [
                (
                    render.when(r.at),
                    r.version,
                    r.outcome,
                    r.id or "-",
                    r.sender or "-",
                    render.clip(r.reason or "-", 70),
                )
                for r in rows
            ],
        )

    show(out, raw, list[ConfigVersion], human)
    return EXIT_OK


commands = Subcommand(_no_args, _commands)
config = Subcommand(_config_args, _config)
