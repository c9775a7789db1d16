"""``agentd run|check-config|test|print-default-config|plugins|schema|version`` (``agentd ctl`` and
the name ``agentctl`` are dispatched to agentctl by agentd/cli/main.py). Heavy imports
(uvloop, the store, OpenTelemetry) are deferred so ``agentd version`` answers fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from agentd import __version__

if TYPE_CHECKING:
    from agentd.config import Config
    from agentd.plugins.registry import Registry

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, with the terminal width read without `shutil`: argparse
    imports it for `shutil.get_terminal_size` (bz2, lzma and their libraries with it) as the
    parser is built, 0.4 MiB the daemon would keep for as long as it runs (issue #18). The
    same width: $COLUMNS, else stdout's terminal, else 80; minus 2, as argparse does."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):  # not a terminal, or closed
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through ``add_subparsers``, every sub-command's) whose help
    is laid out by `_Formatter`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(**kwargs)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agentd", description="agentd: an edge agent daemon for IoT gateways.")
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

    test = sub.add_parser(
        "test",
        help="try a config: run N ticks and print readings and the actions it would take",
        description="Build the config's plugins and run N ticks without the store, the control "
        "socket or the actuators' side effects (nothing is written under the state or runtime "
        "directory); print each reading, each action the policies would take with its "
        "validated params, and each plugin that failed. Exit 0, or 1 if anything failed.",
    )
    test.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: the one `run` would use)",
    )
    test.add_argument(
        "--ticks", type=_tick_count, default=1, metavar="N", help="ticks to run (default 1)"
    )
    test.add_argument(
        "--act", action="store_true", help="really call the actuators (their side effects happen)"
    )

    sub.add_parser("print-default-config", help="print the embedded default config")
    sub.add_parser("version", help="print the version")

    plugins = sub.add_parser("plugins", help="list the plugins this agentd can run")
    plugins.add_argument("--json", action="store_true")

    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of the config, a plugin or a configured instance",
        description="Without NAME: the JSON Schema of the whole config file. NAME: one plugin's "
        "config and action params (`file`, or `actuator:file` for one kind). KIND:NAME (KIND is "
        "sensor, policy, actuator or uplink) is first looked up as an instance [<section>.NAME] "
        "of the config (--config, else the one `run` would use), whose document adds the "
        "actions it offers with their params schemas (an openapi actuator's operations); when "
        "the config has no such instance, it is the plugin NAME of that kind.",
    )
    schema.add_argument(
        "plugin", nargs="?", metavar="NAME", help="a plugin, or KIND:NAME for an instance"
    )
    schema.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file for KIND:NAME (default: the one `run` would use)",
    )

    sub.add_parser("ctl", help="the control CLI (same as agentctl)", add_help=False)
    return p


#: the most ticks `agentd test` runs (a dry run is for trying, not for running)
MAX_TEST_TICKS = 10_000


def _tick_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= n <= MAX_TEST_TICKS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TEST_TICKS}, got {n}")
    return n


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
    if args.command == "test":
        return _test(args.config, args.ticks, args.act)
    if args.command == "plugins":
        return _plugins(args.json)
    if args.command == "schema":
        return _schema(args.plugin, args.config)
    if args.command == "run":
        del parser  # else the daemon keeps every sub-command's parser for as long as it runs
        return _run(args)
    parser.error(f"unknown command {args.command!r}")  # exits with status 2


def _config_path(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    from agentd.config import default_config_path

    found = default_config_path()
    return str(found) if found else None


def _load_checked(file: str | None) -> tuple[str | None, Config, Registry, list[str]] | int:
    """Load a config (shapes, `config.load`) with the registry it was checked against, and
    what can never work in it (agentd/config_refs.py); an exit code if it does not load."""
    from agentd.config_refs import check_host, check_references

    loaded = _load_config(file)
    if isinstance(loaded, int):
        return loaded
    path, config, registry = loaded
    return path, config, registry, check_references(config, registry) + check_host(config)


def _check_config(file: str | None) -> int:
    """Shapes, then what can never work. With no file argument it says which config it
    checked."""
    loaded = _load_checked(file)
    if isinstance(loaded, int):
        return loaded
    path, _, _, problems = loaded
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return EXIT_ERROR
    print("ok" if file else f"ok: {path or 'embedded default'}")
    return EXIT_OK


def _test(file: str | None, ticks: int, act: bool) -> int:
    import asyncio
    import logging
    import os

    from agentd.daemon import loop_settings
    from agentd.dryrun import dry_run

    loaded = _load_checked(file)
    if isinstance(loaded, int):
        return loaded
    path, config, registry, problems = loaded
    print(f"testing {path or 'the embedded default config'}: {ticks} tick{'s' * (ticks != 1)}")
    if act:
        print("--act: the actuators really run: their side effects happen", flush=True)
    # the report says what failed, once; the plugins' own log lines would repeat it
    logging.getLogger("agentd").setLevel(logging.CRITICAL)
    run = dry_run(
        config,
        registry,
        loop_settings(config),
        ticks=ticks,
        act=act,
        out=sys.stdout,
        problems=problems,
    )
    # not asyncio.run: it waits for the executor's threads, and a sensor call that timed out
    # may be blocked in one for good (a hung sysfs read). The report is out by then: leave.
    loop = asyncio.new_event_loop()
    try:
        code, stuck = loop.run_until_complete(run)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if stuck:
        os._exit(code)
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    return code


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


def _schema(plugin: str | None, config_file: str | None) -> int:
    import json

    from agentd.schema import config_schema, instance_schema, plugin_schema, split_kind

    doc: dict[str, Any] | None = None
    kind, name = split_kind(plugin or "")
    if kind is not None:
        # an instance of the config wins over a plugin of the same name: its document is the
        # plugin's with the instance's own actions added
        loaded = _load_config(config_file)
        if isinstance(loaded, int):
            return loaded
        path, config, registry = loaded
        doc = instance_schema(config, kind, name, registry)
        if doc is None and not registry.find_all(name):
            where = path or "the embedded default config"
            print(
                f"agentd: no {kind} named {name!r} in {where}, nor a plugin (see `agentd plugins`)",
                file=sys.stderr,
            )
            return EXIT_ERROR
    try:
        if doc is None:
            doc = plugin_schema(plugin) if plugin else config_schema()
    except KeyError:
        print(f"agentd: no plugin named {plugin!r} (see `agentd plugins`)", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(doc, indent=2, sort_keys=True))
    return EXIT_OK


def _load_config(file: str | None) -> tuple[str | None, Config, Registry] | int:
    """The config `run` would use (or ``file``) with its registry; an exit code (the problems
    printed, one a line) if it does not load."""
    from agentd.config import load
    from agentd.errors import ConfigError
    from agentd.plugins.registry import default_registry

    path = _config_path(file)
    registry = None

    def catalog(blocked: Iterable[str]) -> Registry:
        nonlocal registry
        registry = default_registry(blocked)
        return registry

    try:
        config = load(path, catalog)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_ERROR
    assert registry is not None
    return path, config, registry


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
