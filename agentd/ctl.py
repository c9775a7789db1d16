"""agentctl: the control CLI. One subcommand per protocol command; aligned tables and short
``systemctl status``-style summaries for people, ``--json`` for scripts.

Exit codes: 0 ok, 1 the command failed, 2 usage, 3 agentd is not running, 4 forbidden.

Start-up speed matters (scripts and ExecReload call it): only the blocking client and msgspec
are imported, never asyncio, uvloop, the store or OpenTelemetry. Another room adds a
subcommand with ``@subcommand(...)`` (see `Subcommand`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd import __version__
from agentd.control.client import (
    Client,
    ConnectionLost,
    ControlError,
    NotRunning,
    PermissionDenied,
    RemoteError,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_FORBIDDEN",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "Subcommand",
    "common_options",
    "default_socket",
    "main",
    "subcommand",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_FORBIDDEN = 4


class Failed(Exception):
    """A command-level failure the subcommand already explained; carries the exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    #: adds the subcommand's own arguments
    arguments: Callable[[argparse.ArgumentParser], None]
    #: runs it: (client, parsed args, output) -> exit code
    run: Callable[[Client, argparse.Namespace, Output], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable[[Client, argparse.Namespace, Output], int]], Any]:
    def register(fn: Callable[[Client, argparse.Namespace, Output], int]) -> Any:
        SUBCOMMANDS[name] = Subcommand(name, help, arguments or (lambda p: None), fn)
        return fn

    return register


# -- output ----------------------------------------------------------------------------------
class Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    @staticmethod
    def line(text: str = "") -> None:
        sys.stdout.write(text + "\n")

    @staticmethod
    def dump(value: Any) -> None:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [len(h) for h in headers]
        # a column is right-aligned when every value in it is a number (or empty)
        numeric = [
            any(len(row) > i and _looks_numeric(row[i]) for row in cells)
            for i in range(len(headers))
        ]
        for row in cells:
            for i, v in enumerate(row):
                widths[i] = max(widths[i], len(v))
                if v not in ("-", "") and not _looks_numeric(v):
                    numeric[i] = False
        last = len(headers) - 1

        def fmt(row: Sequence[str]) -> str:
            parts = []
            for i, v in enumerate(row):
                if i == last and not numeric[i]:
                    parts.append(v)
                elif numeric[i]:
                    parts.append(v.rjust(widths[i]))
                else:
                    parts.append(v.ljust(widths[i]))
            return "  ".join(parts).rstrip()

        self.line(fmt(list(headers)))
        for row in cells:
            self.line(fmt(row))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.rstrip("%").removesuffix(" ms"))
    except ValueError:
        return False
    return True


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms"


def size(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def duration(seconds: float) -> str:
    """systemd-style: 1h 2min 3s."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    parts = []
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if s >= span:
            parts.append(f"{s // span}{unit}")
            s %= span
    return " ".join(parts[:3])


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


# -- the socket ------------------------------------------------------------------------------
def default_socket() -> str:
    """Where agentd listens: $AGENTD_SOCKET, else what the config file says, else the runtime
    directory agentd would use (``/run/agentd`` for root or when it exists there)."""
    env = os.environ.get("AGENTD_SOCKET")
    if env:
        return env
    runtime: str | None = None
    sock: str | None = None
    conf_dir = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0] or "/etc/agentd"
    conf = Path(conf_dir) / "agentd.toml"
    if conf.is_file():
        try:
            import tomllib

            raw = tomllib.loads(conf.read_text())
            sock = raw.get("control", {}).get("socket")
            runtime = raw.get("paths", {}).get("runtime_dir")
        except (OSError, ValueError, AttributeError):
            pass
    if isinstance(sock, str) and os.path.isabs(sock):
        return sock
    name = sock if isinstance(sock, str) and sock else "agentd.sock"
    if not isinstance(runtime, str) or not runtime:
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    if runtime is None:
        system = Path("/run/agentd") / name
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if os.geteuid() == 0 or system.exists():
            return str(system)
        runtime = str(Path(xdg) / "agentd") if xdg else f"/tmp/agentd-{os.geteuid()}"
    return str(Path(runtime) / name)


# -- the parser ------------------------------------------------------------------------------
def common_options() -> argparse.ArgumentParser:
    """--json, --socket and --timeout, accepted before or after the subcommand (a nested
    subcommand's parser takes them as a parent too)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    common.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="agentd's control socket (default: $AGENTD_SOCKET or the runtime directory's)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help="give up waiting for an answer after this long (default 30)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = common_options()
    p = argparse.ArgumentParser(
        prog="agentctl",
        description="Control a running agentd through its Unix socket.",
        parents=[common],
        epilog="exit codes: 0 ok, 1 command failed, 2 usage, 3 agentd not running, 4 forbidden",
    )
    p.add_argument("--version", action="version", version=f"agentctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for sc in SUBCOMMANDS.values():
        sp = sub.add_parser(sc.name, help=sc.help, description=sc.help, parents=[common])
        sc.arguments(sp)
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = Output(getattr(args, "json", False))
    path = getattr(args, "socket", None) or default_socket()
    client = Client(path, timeout=getattr(args, "timeout", 30.0))
    try:
        with client:
            return SUBCOMMANDS[args.command].run(client, args, out)
    except NotRunning as exc:
        return _fail(out, "not_running", str(exc), EXIT_NOT_RUNNING)
    except PermissionDenied as exc:
        return _fail(out, "forbidden", str(exc), EXIT_FORBIDDEN)
    except RemoteError as exc:
        code = EXIT_FORBIDDEN if exc.code == "forbidden" else EXIT_ERROR
        return _fail(out, exc.code, exc.message, code, exc.details)
    except Failed as exc:
        return _fail(out, "failed", str(exc), exc.code, quiet_json=True)
    except ConnectionLost as exc:
        return _fail(out, "connection_lost", str(exc), EXIT_ERROR)
    except ControlError as exc:
        return _fail(out, "error", str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130
    except BrokenPipeError:
        # the reader went away (`agentctl watch | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(
    out: Output,
    code: str,
    message: str,
    exit_code: int,
    details: list[str] | None = None,
    quiet_json: bool = False,
) -> int:
    if out.json and not quiet_json:
        out.dump({"error": {"code": code, "message": message, "details": details or []}})
    print(f"agentctl: {message}", file=sys.stderr)
    for line in details or []:
        if line != message:
            print(f"  {line}", file=sys.stderr)
    return exit_code


def _show(out: Output, result: Any, human: Callable[[Any], None]) -> int:
    if out.json:
        out.dump(result)
    else:
        human(result)
    return EXIT_OK


# -- subcommands -----------------------------------------------------------------------------
@subcommand("ping", "check that agentd answers")
def _ping(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.connect()
    t0 = time.perf_counter()
    result = _rpc(client, "ping")
    rtt = time.perf_counter() - t0
    if out.json:
        out.dump({"result": result, "rtt": rtt})
    else:
        out.line(f"{result} from {client.path} in {ms(rtt)}")
    return EXIT_OK


@subcommand("hello", "protocol version, your role and the commands you may use")
def _hello(client: Client, args: argparse.Namespace, out: Output) -> int:
    def human(r: dict[str, Any]) -> None:
        out.line(
            f"{r['server']} (pid {r['pid']}), protocol {r['protocol']}, "
            f"you are uid {r['uid']} with role {r['role']}"
        )
        lim = r.get("limits", {})
        out.line(
            "limits: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(lim.items()))
            + "\n"
        )
        out.table(
            ["COMMAND", "ROLE", "DESCRIPTION"],
            [
                (name, c["role"], c["help"].split("\n")[0])
                for name, c in sorted(r["commands"].items())
            ],
        )

    import msgspec

    return _show(out, msgspec.to_builtins(client.hello()), human)


@subcommand("status", "a summary of the running daemon, like systemctl status")
def _status(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _show(out, _rpc(client, "status"), lambda r: _render_status(out, r))


def _render_status(out: Output, r: dict[str, Any]) -> None:
    loop, proc, ctl = r["loop"], r["process"], r.get("control") or {}
    plugins = r.get("plugins", [])
    ok = sum(p["state"] == "ok" for p in plugins)
    state = r["state"] + (" (paused)" if loop.get("paused") else "")
    dot = "●" if (sys.stdout.encoding or "").lower().startswith("utf") else "*"
    out.line(f"{dot} agentd {r['version']} - {state}")
    started = time.time() - r["uptime"]
    rows = [
        ("Active", f"{state} since {when(started)}; {duration(r['uptime'])} ago"),
        ("PID", str(r["pid"])),
        ("Config", f"{r['config']} (reload generation {r['reload_generation']})"),
        (
            "Loop",
            f"{loop['ticks']} ticks every {loop['interval']:g}s; lateness p50 "
            f"{ms(loop['lateness_p50'])}, p99 {ms(loop['lateness_p99'])}, max "
            f"{ms(loop['lateness_max'])}; {loop['overruns']} overruns, {loop['skipped']} skipped",
        ),
        (
            "Tick",
            f"last {ms(loop['last']['total'])} (perceive {ms(loop['last']['perceive'])}, decide "
            f"{ms(loop['last']['decide'])}, act {ms(loop['last']['act'])}); mean "
            f"{ms(loop['mean']['total'])}",
        ),
        (
            "Actions",
            f"{r.get('actions_in_flight', 0)} in flight, {r.get('dropped_actions', 0)} dropped",
        ),
        ("Plugins", f"{ok}/{len(plugins)} ok"),
        ("Store", _summary(r.get("store"), "disabled")),
        (
            "Process",
            f"RSS {size(proc['rss'])}, CPU {proc['cpu_user'] + proc['cpu_system']:.2f}s "
            f"({proc['cpu_percent']:.1f}% of a core), {proc['threads']} threads, "
            f"{proc['fds']} fds",
        ),
    ]
    if ctl:
        errors = sum(ctl.get("errors", {}).values())
        rows.append(
            (
                "Control",
                f"{ctl['connections']} connections, {ctl['requests']} requests, {errors} "
                f"errors, {ctl['watchers']} watchers ({ctl['watch_dropped']} dropped)",
            )
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.line(f"{key.rjust(width + 2)}: {value}")
    if plugins:
        out.line()
        _plugin_table(out, plugins)


def _summary(value: Any, none: str) -> str:
    """A generic one-line form of a Struct rendered as a dict (new fields show up)."""
    if value is None:
        return none
    if not isinstance(value, dict):
        return _cell(value)
    first = [k for k in ("state", "status") if k in value]
    keys = first + [k for k in value if k not in first]
    parts = []
    for k in keys:
        v = value[k]
        if isinstance(v, dict | list):
            continue
        if isinstance(v, float) and v > 1e9:  # a Unix time
            shown = when(v)
        elif isinstance(v, int) and not isinstance(v, bool) and "bytes" in k:
            shown = size(v)
        else:
            shown = _cell(v)
        parts.append(shown if k in first else f"{k.replace('_', ' ')} {shown}")
    return ", ".join(parts)


def _plugin_table(out: Output, plugins: list[dict[str, Any]]) -> None:
    out.table(
        ["NAME", "KIND", "PLUGIN", "STATE", "CALLS", "ERRORS", "LAST ERROR"],
        [
            (
                p["name"],
                p["kind"],
                p["plugin"],
                p["state"],
                p["calls"],
                p["errors"],
                p["last_error"] if p["state"] != "ok" else "-",
            )
            for p in plugins
        ],
    )


@subcommand("plugins", "the configured plugins with their state and error counts")
def _plugins(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _show(out, _rpc(client, "plugins"), lambda r: _plugin_table(out, r))


@subcommand(
    "plugin",
    "one plugin: status, config and JSON Schema",
    lambda p: _add(p, "name", help="instance name (or a plugin name)"),
)
def _plugin(client: Client, args: argparse.Namespace, out: Output) -> int:
    def human(r: dict[str, Any]) -> None:
        if r.get("configured"):
            out.line(
                f"{r['name']} ({r['kind']}, plugin {r['plugin']} from {r['origin']}) - {r['state']}"
            )
            if r.get("description"):
                out.line(f"  {r['description']}")
            out.line(f"  calls {r['calls']}, errors {r['errors']}")
            if r.get("last_error"):
                out.line(f"  last error: {r['last_error']}")
            if r.get("actions"):
                out.line(f"  actions: {', '.join(r['actions'])}")
            out.line("\nConfig:")
            for k, v in r["config"].items():
                out.line(f"  {k} = {json.dumps(v, default=str)}")
        else:
            out.line(f"{r['name']}: a registered plugin, not configured here")
        out.line("\nSchema:")
        out.line(json.dumps(r["schema"], indent=2, sort_keys=True))

    return _show(out, _rpc(client, "plugin", {"name": args.name}), human)


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


@subcommand("sessions", "list, get, put or delete sessions", _sessions_args)
def _sessions(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.op == "list":
        rows = _rpc(
            client,
            "sessions.list",
            _drop_none(prefix=args.prefix, limit=args.limit, after=args.after),
        )
        return _show(
            out,
            rows,
            lambda r: out.table(
                ["ID", "VERSION", "UPDATED", "EXPIRES", "STATE"],
                [
                    (
                        s["id"],
                        s["version"],
                        when(s["updated_at"]),
                        when(s.get("expires_at")),
                        _clip(json.dumps(s["state"], default=str), 48),
                    )
                    for s in r
                ],
            ),
        )
    if args.op == "get":
        return _show(out, _rpc(client, "sessions.get", {"id": args.id}), lambda s: _session(out, s))
    if args.op == "put":
        put_args = _drop_none(
            id=args.id,
            state=_json_or_str(args.state),
            expected_version=args.expected_version,
            ttl=args.ttl,
        )
        return _show(
            out,
            _rpc(client, "sessions.put", put_args),
            lambda s: out.line(f"stored session {s['id']} (version {s['version']})"),
        )
    result = _rpc(client, "sessions.delete", {"id": args.id})
    return _show(out, result, lambda r: out.line(f"deleted session {r['deleted']}"))


def _session(out: Output, s: dict[str, Any]) -> None:
    out.line(f"session {s['id']} (version {s['version']})")
    out.line(f"  created {when(s['created_at'])}, updated {when(s['updated_at'])}")
    if s.get("expires_at"):
        out.line(f"  expires {when(s['expires_at'])}")
    out.line(json.dumps(s["state"], indent=2, default=str))


# -- journals --------------------------------------------------------------------------------
def _journal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("journal", choices=["actions", "observations"])
    p.add_argument("--since", type=_time_arg, help="Unix time, ISO time, or an age: 10m, 2h, 1d")
    p.add_argument("--until", type=_time_arg, help="same forms as --since")
    p.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    p.add_argument("--tick-from", type=int, help="observations: first tick")
    p.add_argument("--tick-to", type=int, help="observations: last tick")


@subcommand("journal", "query the action or observation journal", _journal_args)
def _journal(client: Client, args: argparse.Namespace, out: Output) -> int:
    query = _drop_none(since=args.since, until=args.until, limit=args.limit)
    if args.journal == "observations":
        query.update(_drop_none(tick_from=args.tick_from, tick_to=args.tick_to))
        rows = _rpc(client, "journal.observations", query)
        return _show(
            out,
            rows,
            lambda r: out.table(
                ["TICK", "TIME", "READINGS", "ERRORS", "SAMPLE"],
                [
                    (
                        o["tick"],
                        when(o["wall"]),
                        sum(len(m) for m in o.get("readings", {}).values()),
                        len(o.get("errors", {})),
                        _clip(_sample(o.get("readings", {})), 60),
                    )
                    for o in r
                ],
            ),
        )
    rows = _rpc(client, "journal.actions", query)
    return _show(out, rows, lambda r: _action_table(out, r))


def _action_table(out: Output, results: list[dict[str, Any]]) -> None:
    out.table(
        ["FINISHED", "ACTUATOR", "ACTION", "STATUS", "ATTEMPTS", "DURATION", "SOURCE", "ERROR"],
        [
            (
                when(x.get("finished_at")),
                x["action"]["actuator"],
                x["action"]["name"],
                x["status"],
                x.get("attempts", 0),
                ms(x.get("duration")),
                x["action"].get("source") or "-",
                x.get("error") or "-",
            )
            for x in results
        ],
    )


def _sample(readings: dict[str, dict[str, Any]]) -> str:
    return " ".join(
        f"{s}.{m}={_cell(v)}" for s, metrics in readings.items() for m, v in metrics.items()
    )


# -- the loop --------------------------------------------------------------------------------
@subcommand("tick", "run one perceive -> decide -> act now and show what it did")
def _tick(client: Client, args: argparse.Namespace, out: Output) -> int:
    def human(r: dict[str, Any]) -> None:
        obs, t = r["observation"], r["timings"]
        n = sum(len(m) for m in obs["readings"].values())
        out.line(
            f"tick {r['tick']}: {n} readings, {len(obs['errors'])} errors, "
            f"{len(r['results'])} actions in {ms(t['total'])} (perceive {ms(t['perceive'])}, "
            f"decide {ms(t['decide'])}, act {ms(t['act'])})\n"
        )
        out.table(
            ["SENSOR", "METRIC", "VALUE"],
            [(s, m, v) for s, metrics in obs["readings"].items() for m, v in metrics.items()]
            + [(s, "(error)", e) for s, e in obs["errors"].items()],
        )
        if r["results"]:
            out.line()
            _action_table(out, r["results"])

    return _show(out, _rpc(client, "tick"), human)


@subcommand("pause", "pause the perception loop")
def _pause(client: Client, args: argparse.Namespace, out: Output) -> int:
    r = _rpc(client, "pause")
    return _show(out, r, lambda r: out.line("paused" if r["changed"] else "already paused"))


@subcommand("resume", "resume the perception loop")
def _resume(client: Client, args: argparse.Namespace, out: Output) -> int:
    r = _rpc(client, "resume")
    return _show(out, r, lambda r: out.line("resumed" if r["changed"] else "already running"))


@subcommand("reload", "re-read the config; fails (exit 1) with the errors if it is invalid")
def _reload(client: Client, args: argparse.Namespace, out: Output) -> int:
    r = _rpc(client, "reload")
    return _show(out, r, lambda r: out.line(f"reloaded (generation {r['generation']})"))


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


@subcommand("act", "run an action on an actuator now (a manual tool call)", _act_args)
def _act(client: Client, args: argparse.Namespace, out: Output) -> int:
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"agentctl act: --param expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        params[key] = _json_or_str(value)
    request = _drop_none(
        actuator=args.actuator,
        action=args.action,
        params=params,
        priority=args.priority,
        key=args.key,
    )
    r = _rpc(client, "act", request)
    if out.json:
        out.dump(r)
    else:
        a = r["action"]
        line = (
            f"{r['status']}: {a['actuator']}.{a['name']} "
            f"({r['attempts']} attempts, {ms(r['duration'])})"
        )
        if r.get("output") is not None:
            line += f": {_cell(r['output'])}"
        out.line(line)
    if r["status"] != "ok":
        raise Failed(r.get("error") or r["status"])
    return EXIT_OK


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--events",
        default="tick,action,state",
        help="comma-separated kinds: tick, action, state (default: all)",
    )


@subcommand(
    "watch", "print tick, action and state events as they happen (Ctrl-C stops)", _watch_args
)
def _watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    kinds = [k.strip() for k in args.events.split(",") if k.strip()]
    rid = client.send("watch", {"events": kinds})
    client.result(client.wait(rid))  # raises on a refusal
    sys.stdout.flush()
    for message in client.events():
        if message.id != rid or not isinstance(message.event, str):
            continue
        import msgspec

        data = None if message.data is msgspec.UNSET else msgspec.msgpack.decode(message.data)
        if out.json:
            out.line(json.dumps({"event": message.event, "data": data}, default=str))
        else:
            out.line(_event_line(message.event, data))
        sys.stdout.flush()
    return EXIT_OK


def _event_line(kind: str, d: Any) -> str:
    now = clock(time.time())
    if kind == "tick":
        obs, t = d["observation"], d["timings"]
        n = sum(len(m) for m in obs["readings"].values())
        manual = " (manual)" if d.get("manual") else ""
        return (
            f"{clock(obs['wall'])} tick {d['tick']}{manual}: late {ms(d['lateness'])}, "
            f"took {ms(t['total'])}, {n} readings, {len(obs['errors'])} errors, "
            f"{len(d['results'])} actions"
        )
    if kind == "action":
        a = d["action"]
        tail = f": {d['error']}" if d.get("error") else ""
        src = f" from {a['source']}" if a.get("source") else ""
        return (
            f"{clock(d.get('finished_at') or time.time())} action {a['actuator']}.{a['name']} "
            f"{d['status']} ({d.get('attempts', 0)} attempts, {ms(d.get('duration'))}){src}{tail}"
        )
    if kind == "state":
        extra = " ".join(f"{k}={v}" for k, v in d.items() if k != "state")
        return f"{now} state {d.get('state')}" + (f" {extra}" if extra else "")
    return f"{now} {kind} {json.dumps(d, default=str)}"


@subcommand("flush", "commit everything queued for the store now")
def _flush(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _show(out, _rpc(client, "flush"), lambda r: out.line("flushed"))


def _call_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cmd", help="a protocol command, e.g. sessions.list")
    p.add_argument("args", nargs="?", default="{}", help="its arguments as a JSON object")


@subcommand(
    "call", "send any protocol command with JSON arguments; prints the JSON result", _call_args
)
def _call(client: Client, args: argparse.Namespace, out: Output) -> int:
    try:
        call_args = json.loads(args.args)
    except ValueError as exc:
        print(f"agentctl call: ARGS is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(call_args, dict):
        print("agentctl call: ARGS must be a JSON object", file=sys.stderr)
        return EXIT_USAGE
    out.dump(_rpc(client, args.cmd, call_args))
    return EXIT_OK


# -- telemetry (agentd/telemetry.py, agentd/health.py) -------------------------------------
def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prefix", nargs="?", default="", help="only metrics whose name starts so")


@subcommand("metrics", "agentd's own metrics, as they are now", _metrics_args)
def _metrics(client: Client, args: argparse.Namespace, out: Output) -> int:
    points = [m for m in _rpc(client, "metrics") if m["name"].startswith(args.prefix)]

    def value(m: dict[str, Any]) -> str:
        if m["kind"] != "histogram":
            v = m["value"]
            return size(v) if m["unit"] == "By" else f"{v:g}"
        if m["unit"] == "s":
            return f"n={m['count']} p50={_seconds(m['p50'])} p99={_seconds(m['p99'])}"
        return f"n={m['count']} p50={m['p50']:g} p99={m['p99']:g}"

    def human(rows: list[dict[str, Any]]) -> None:
        out.table(
            ["METRIC", "ATTRIBUTES", "VALUE", "UNIT"],
            [
                (
                    m["name"],
                    ",".join(f"{k}={v}" for k, v in m["attributes"].items()) or "-",
                    value(m),
                    m["unit"],
                )
                for m in rows
            ],
        )

    return _show(out, points, human)


def _seconds(value: float) -> str:
    return f"{value * 1e6:.0f} us" if value < 0.001 else ms(value)


#: `agentctl health` exit codes: ok, degraded, failing (for ExecStartPost, cron, fleet tools)
HEALTH_EXIT = {"ok": 0, "degraded": 1, "failing": 2}


@subcommand("health", "ok / degraded / failing with reasons; exit code 0 / 1 / 2")
def _health(client: Client, args: argparse.Namespace, out: Output) -> int:
    report = _rpc(client, "health")

    def human(r: dict[str, Any]) -> None:
        out.line(r["status"])
        for reason in r["reasons"]:
            out.line(f"  {reason}")

    _show(out, report, human)
    return HEALTH_EXIT.get(report["status"], EXIT_ERROR)


# -- helpers ---------------------------------------------------------------------------------
def _rpc(client: Client, cmd: str, args: dict[str, Any] | None = None) -> Any:
    return client.call(cmd, args)


def _add(p: argparse.ArgumentParser, *names: str, **kw: Any) -> None:
    p.add_argument(*names, **kw)


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _time_arg(text: str) -> float:
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
