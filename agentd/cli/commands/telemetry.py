"""agentctl metrics and health (telemetry's commands)."""

from __future__ import annotations

import argparse

import msgspec

from agentd.cli import render
from agentd.cli.agentctl import EXIT_ERROR, Subcommand, show
from agentd.cli.render import Output
from agentd.control.client import Client
from agentd.model import HEALTH_EXIT_CODES, HealthReport, MetricPoint

__all__ = ["health", "metrics"]


def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prefix", nargs="?", default="", help="only metrics whose name starts so")


def _metrics(client: Client, args: argparse.Namespace, out: Output) -> int:
    points = client.call_as("metrics", list[MetricPoint])
    chosen = [m for m in points if m.name.startswith(args.prefix)]
    if out.json:
        out.dump(msgspec.to_builtins(chosen))
    else:
        render.metrics_table(out, chosen)
    return 0


def _health(client: Client, args: argparse.Namespace, out: Output) -> int:
    def human(r: HealthReport) -> None:
        out.line(r.status)
        for reason in r.reasons:
            out.line(f"  {reason}")

    report = show(out, client.call_raw("health"), HealthReport, human)
    return HEALTH_EXIT_CODES.get(report.status, EXIT_ERROR)


def _none(p: argparse.ArgumentParser) -> None:
    pass


metrics = Subcommand(_metrics_args, _metrics)
health = Subcommand(_none, _health)
