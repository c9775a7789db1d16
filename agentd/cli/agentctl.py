"""agentctl: the control CLI. One subcommand per protocol command; aligned tables and short
``systemctl status``-style summaries for people, ``--json`` for scripts.

Exit codes: 0 ok, 1 the command failed, 2 usage, 3 agentd is not running, 4 forbidden.

`COMMANDS` is the static table of subcommands (pip's ``commands_dict``): name -> the module
that implements it and its one-line summary. Start-up speed matters (scripts and ExecReload
call it): only the blocking client, msgspec and the command modules are imported, never
asyncio, uvloop, the store or OpenTelemetry.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

from agentd import __version__, paths
from agentd.cli.render import Output
from agentd.control.client import (
    Client,
    ConnectionLost,
    ControlError,
    NotRunning,
    PermissionDenied,
    RemoteError,
)

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_FORBIDDEN",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandSpec",
    "Failed",
    "Subcommand",
    "common_options",
    "default_socket",
    "main",
    "show",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RUNNING: Final = 3
EXIT_FORBIDDEN: Final = 4

T = TypeVar("T")


class Failed(Exception):
    """A command-level failure the subcommand already explained; carries the exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Subcommand:
    """What a command module exports for each of its subcommands."""

    #: adds the subcommand's own arguments
    arguments: Callable[[argparse.ArgumentParser], None]
    #: runs it: (client, parsed args, output) -> exit code
    run: Callable[[Client, argparse.Namespace, Output], int]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    #: the module with a `Subcommand` named like the command (``sessions`` -> ``sessions``)
    module: str
    summary: str


_DAEMON = "agentd.cli.commands.daemon"
_LOOP = "agentd.cli.commands.loop"
_STORE = "agentd.cli.commands.store"
_TELEMETRY = "agentd.cli.commands.telemetry"
_FLEET = "agentd.cli.commands.fleet"

COMMANDS: Final[dict[str, CommandSpec]] = {
    "ping": CommandSpec(_DAEMON, "check that agentd answers"),
    "hello": CommandSpec(_DAEMON, "protocol version, your role and the commands you may use"),
    "status": CommandSpec(_DAEMON, "a summary of the running daemon, like systemctl status"),
    "plugins": CommandSpec(_DAEMON, "the configured plugins with their state and error counts"),
    "plugin": CommandSpec(_DAEMON, "one plugin: status, config and JSON Schema"),
    "sessions": CommandSpec(_STORE, "list, get, put or delete sessions"),
    "journal": CommandSpec(_STORE, "query the action or observation journal"),
    "tick": CommandSpec(_LOOP, "run one perceive -> decide -> act now and show what it did"),
    "pause": CommandSpec(_LOOP, "pause the perception loop"),
    "resume": CommandSpec(_LOOP, "resume the perception loop"),
    "reload": CommandSpec(
        _LOOP, "re-read the config; fails (exit 1) with the errors if it is invalid"
    ),
    "act": CommandSpec(_LOOP, "run an action on an actuator now (a manual tool call)"),
    "watch": CommandSpec(
        _LOOP, "print tick, action and state events as they happen (Ctrl-C stops)"
    ),
    "flush": CommandSpec(_STORE, "commit everything queued for the store now"),
    "call": CommandSpec(
        _DAEMON, "send any protocol command with JSON arguments; prints the JSON result"
    ),
    "metrics": CommandSpec(_TELEMETRY, "agentd's own metrics, as they are now"),
    "health": CommandSpec(_TELEMETRY, "ok / degraded / failing with reasons; exit code 0 / 5 / 6"),
    "uplink": CommandSpec(
        "agentd.cli.commands.uplink", "the fleet uplinks: link, cursors, backlog"
    ),
    "commands": CommandSpec(_FLEET, "recent commands from the fleet and their outcomes"),
    "config": CommandSpec(_FLEET, "config history: versions the fleet pushed, and their fate"),
}


def load(name: str) -> Subcommand:
    spec = COMMANDS[name]
    found: Subcommand = getattr(importlib.import_module(spec.module), name)
    return found


# -- the socket ------------------------------------------------------------------------------
def default_socket() -> str:
    """Where agentd listens: $AGENTD_SOCKET, else the socket agentd run with the config file's
    ``[control] socket`` / ``[paths] runtime_dir`` would use (`paths.client_socket`)."""
    env = os.environ.get("AGENTD_SOCKET")
    if env:
        return env
    sock: str | None = None
    runtime: str | None = None
    try:
        # an unreadable config (a user outside its group) is the same as none: the default rule
        text = paths.config_file().read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    if text:
        try:
            import tomllib

            raw = tomllib.loads(text)
            value = raw.get("control", {}).get("socket")
            sock = value if isinstance(value, str) and value else None
            value = raw.get("paths", {}).get("runtime_dir")
            runtime = value if isinstance(value, str) and value else None
        except (ValueError, AttributeError):
            pass
    return str(paths.client_socket(sock, runtime))


# -- the parser ------------------------------------------------------------------------------
#: the longest --timeout (a day): an answer that takes longer is not coming
MAX_TIMEOUT: Final = 86_400.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds, got {text}"
        )
    return value


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
        type=_seconds,
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
    for name, spec in COMMANDS.items():
        sp = sub.add_parser(name, help=spec.summary, description=spec.summary, parents=[common])
        load(name).arguments(sp)
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
            return load(args.command).run(client, args, out)
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
    except msgspec.ValidationError as exc:  # a reply this agentctl cannot read
        return _fail(out, "bad_reply", f"unexpected reply from agentd: {exc}", EXIT_ERROR)
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
        if line not in message:  # each problem once: the message may quote the first
            print(f"  {line}", file=sys.stderr)
    return exit_code


def show(out: Output, raw: msgspec.Raw, type: type[T], human: Callable[[T], None]) -> T:
    """Print a reply: ``--json`` as the daemon sent it (fields this agentctl does not know
    included), else ``human`` of it decoded into its reply Struct. Returns the decoded reply."""
    reply = msgspec.msgpack.decode(raw, type=type)
    if out.json:
        out.dump(msgspec.msgpack.decode(raw))
    else:
        human(reply)
    return reply
