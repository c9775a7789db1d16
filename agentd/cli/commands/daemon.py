"""agentctl ping, hello, status, plugins, plugin and call."""

from __future__ import annotations

import argparse
import json
import sys
import time

import msgspec

from agentd.cli import render
from agentd.cli.agentctl import EXIT_OK, EXIT_USAGE, Subcommand, show
from agentd.cli.render import Output
from agentd.control.client import Client
from agentd.control.protocol import PROTOCOL_VERSION, HelloInfo
from agentd.model import PluginDetail, PluginInfo, StatusReport

__all__ = ["call", "hello", "ping", "plugin", "plugins", "status"]


def _none(p: argparse.ArgumentParser) -> None:
    pass


def _ping(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.connect()
    t0 = time.perf_counter()
    result = client.call_as("ping", str)
    rtt = time.perf_counter() - t0
    if out.json:
        out.dump({"result": result, "rtt": rtt})
    else:
        out.line(f"{result} from {client.path} in {render.ms(rtt)}")
    return EXIT_OK


def _hello(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("hello", {"protocol": PROTOCOL_VERSION, "client": "agentctl"})
    show(out, raw, HelloInfo, lambda r: render.hello(out, r))
    return EXIT_OK


def _status(client: Client, args: argparse.Namespace, out: Output) -> int:
    show(out, client.call_raw("status"), StatusReport, lambda r: _status_text(out, r))
    return EXIT_OK


def _status_text(out: Output, r: StatusReport) -> None:
    render.status(out, r)
    if r.uplinks:
        from agentd.cli.commands.uplink import summary_line

        out.line(f"Uplinks: {summary_line(r.uplinks)}")


def _plugins(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("plugins")
    show(out, raw, list[PluginInfo], lambda r: render.plugin_table(out, r))
    return EXIT_OK


def _plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="instance name (or a plugin name)")


def _plugin(client: Client, args: argparse.Namespace, out: Output) -> int:
    raw = client.call_raw("plugin", {"name": args.name})
    show(out, raw, PluginDetail, lambda r: render.plugin_detail(out, r))
    return EXIT_OK


def _call_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cmd", help="a protocol command, e.g. sessions.list")
    p.add_argument("args", nargs="?", default="{}", help="its arguments as a JSON object")


def _call(client: Client, args: argparse.Namespace, out: Output) -> int:
    try:
        call_args = json.loads(args.args)
    except ValueError as exc:
        print(f"agentctl call: ARGS is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(call_args, dict):
        print("agentctl call: ARGS must be a JSON object", file=sys.stderr)
        return EXIT_USAGE
    # any command, so no reply Struct: printed as the daemon sent it
    out.dump(msgspec.msgpack.decode(client.call_raw(args.cmd, call_args)))
    return EXIT_OK


ping = Subcommand(_none, _ping)
hello = Subcommand(_none, _hello)
status = Subcommand(_none, _status)
plugins = Subcommand(_none, _plugins)
plugin = Subcommand(_plugin_args, _plugin)
call = Subcommand(_call_args, _call)
