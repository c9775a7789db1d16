"""``agentd run|check-config|print-default-config|plugins|schema|version`` (``agentd ctl`` and
the name ``agentctl`` are dispatched to agentctl by agentd/cli/main.py). Heavy imports
(uvloop, the store, OpenTelemetry) are deferred so ``agentd version`` answers fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentd import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentd", description="agentd: an edge agent daemon for IoT gateways."
    )
    p.add_argument("--version", action="version", version=f"agentd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: /etc/agentd/agentd.toml if present, else the embedded default)",
    )
    run.add_argument("--state-dir", metavar="DIR", help="where the database lives")
    run.add_argument("--runtime-dir", metavar="DIR", help="where the socket and lock live")
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override [log] level"
    )

    check = sub.add_parser("check-config", help="validate a config file (dry run)")
    check.add_argument(
        "file", nargs="?", metavar="FILE", help="config file (default: the one `run` would use)"
    )

    sub.add_parser("print-default-config", help="print the embedded default config")
    sub.add_parser("version", help="print the version")

    plugins = sub.add_parser("plugins", help="list the plugins this agentd can run")
    plugins.add_argument("--json", action="store_true")

    schema = sub.add_parser("schema", help="print the JSON Schema of the config or a plugin")
    schema.add_argument("plugin", nargs="?", help="one plugin's config and action params")

    sub.add_parser("ctl", help="the control CLI (same as agentctl)", add_help=False)
    return p


def main(argv: Sequence[str]) -> int:  # noqa: RET503 - parser.error exits
    args_list = list(argv)
    if args_list[:1] == ["version"]:
        print(f"agentd {__version__}")
        return EXIT_OK
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "print-default-config":
        from agentd.config import DEFAULT_CONFIG

        sys.stdout.write(DEFAULT_CONFIG)
        return EXIT_OK
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "plugins":
        return _plugins(args.json)
    if args.command == "schema":
        return _schema(args.plugin)
    if args.command == "run":
        return _run(args)
    parser.error(f"unknown command {args.command!r}")  # exits with status 2


def _config_path(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    from agentd.config import default_config_path

    found = default_config_path()
    return str(found) if found else None


def _check_config(file: str | None) -> int:
    from agentd.config import load
    from agentd.errors import ConfigError
    from agentd.plugins.registry import default_registry

    path = _config_path(file)
    try:
        load(path, default_registry)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_ERROR
    print("ok")
    return EXIT_OK


def _plugins(as_json: bool) -> int:
    from agentd.plugins.registry import default_registry

    registry = default_registry()
    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "origin": s.origin,
            "version": s.version,
            "description": s.description,
            "actions": sorted(s.actions),
        }
        for s in registry.specs()
    ]
    if as_json:
        import json

        print(json.dumps({"plugins": rows, "problems": registry.problems}, indent=2))
        return EXIT_OK
    width = max((len(r["name"]) for r in rows), default=4)
    wo = max((len(r["origin"]) for r in rows), default=6)
    print(f"{'NAME':<{width}}  {'KIND':<8}  {'ORIGIN':<{wo}}  DESCRIPTION")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['kind']:<8}  {r['origin']:<{wo}}  {r['description']}")
    for problem in registry.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    return EXIT_OK


def _schema(plugin: str | None) -> int:
    import json

    from agentd.schema import config_schema, plugin_schema

    try:
        doc = plugin_schema(plugin) if plugin else config_schema()
    except KeyError:
        print(f"agentd: no plugin named {plugin!r} (see `agentd plugins`)", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(doc, indent=2, sort_keys=True))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from agentd.config import load
    from agentd.daemon import DaemonOptions, run_daemon
    from agentd.errors import ConfigError
    from agentd.logs import setup_logging
    from agentd.plugins.registry import default_registry

    path = _config_path(args.config)
    setup_logging(args.log_level or "info")
    try:
        config = load(path, default_registry)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"agentd: bad config: {line}", file=sys.stderr)
        return EXIT_ERROR
    setup_logging(args.log_level or config.log.level)
    options = DaemonOptions(
        config_path=path, state_dir=args.state_dir, runtime_dir=args.runtime_dir
    )
    return run_daemon(config, options)
