"""One function per control command. Each gets the `RequestContext` and its validated args
Struct and returns a result (or a coroutine of one); errors are raised as `CommandError`.

`COMMANDS` is the table the server starts from; other rooms extend a running server's table
with `ControlServer.add_command` (telemetry adds ``metrics`` and ``health`` that way).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentd import __version__
from agentd.control.protocol import PROTOCOL_VERSION
from agentd.control.server import Command, CommandError, RequestContext, Role
from agentd.model import Action, ActionResult, Session, TickReport

__all__ = ["COMMANDS", "command"]

COMMANDS: dict[str, Command] = {}

Handler = Callable[[RequestContext, Any], Any]


def command(
    name: str, args: type[msgspec.Struct] | None = None, role: Role = "read", help: str = ""
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, fn, args, role, help or (fn.__doc__ or "").strip())
        return fn

    return register


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


# -- connection ------------------------------------------------------------------------------
@command("ping", role="none")
def ping(ctx: RequestContext, args: None) -> str:
    """Answer "pong"."""
    return "pong"


class HelloArgs(_Args, frozen=True):
    protocol: int = PROTOCOL_VERSION
    client: str = ""


@command("hello", HelloArgs, role="none")
def hello(ctx: RequestContext, args: HelloArgs) -> dict[str, Any]:
    """Protocol version, server version, the caller's role and the commands it may use."""
    if args.protocol != PROTOCOL_VERSION:
        raise CommandError(
            "unsupported_version",
            f"this agentd speaks protocol {PROTOCOL_VERSION}, the client asked for {args.protocol}",
        )
    server = ctx.server
    return {
        "protocol": PROTOCOL_VERSION,
        "server": f"agentd {__version__}",
        "pid": os.getpid(),
        "role": ctx.role,
        "uid": ctx.peer.uid,
        "commands": {
            name: {"role": c.role, "help": c.help} for name, c in sorted(server.commands.items())
        },
        "limits": {
            "max_frame": server.max_frame,
            "max_connections": server.config.max_connections,
            "idle_timeout": server.config.idle_timeout,
            "watch_buffer": server.config.watch_buffer,
        },
    }


# -- reads -----------------------------------------------------------------------------------
@command("status")
async def status(ctx: RequestContext, args: None) -> Any:
    """Version, PID, uptime, state, config, reload generation, tick statistics, plugins, store
    health, process RSS/CPU and control-plane counters."""
    report = await ctx.facade.status()
    return msgspec.structs.replace(report, control=ctx.server.stats())


@command("plugins")
def plugins(ctx: RequestContext, args: None) -> Any:
    """The configured plugin instances with their state and error counts."""
    return ctx.facade.plugins()


class PluginArgs(_Args, frozen=True):
    name: str


@command("plugin", PluginArgs)
def plugin(ctx: RequestContext, args: PluginArgs) -> Any:
    """One plugin instance: status, config and JSON Schema."""
    found = ctx.facade.plugin(args.name)
    if found is None:
        known = ", ".join(sorted(p.name for p in ctx.facade.plugins())) or "none"
        raise CommandError("not_found", f"no plugin named {args.name!r} (configured: {known})")
    return found


# -- sessions --------------------------------------------------------------------------------
def _store(ctx: RequestContext) -> Any:
    store = ctx.facade.store
    if store is None:
        raise CommandError("unavailable", "the store is disabled ([store] enabled = false)")
    return store


class SessionsListArgs(_Args, frozen=True):
    prefix: str = ""
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 100
    after: str | None = None


@command("sessions.list", SessionsListArgs)
async def sessions_list(ctx: RequestContext, args: SessionsListArgs) -> list[Session]:
    """Sessions whose id starts with ``prefix``, in id order (page with ``after``)."""
    result: list[Session] = await _store(ctx).sessions.list(
        prefix=args.prefix, limit=args.limit, after=args.after
    )
    return result


class SessionIdArgs(_Args, frozen=True):
    id: Annotated[str, Meta(min_length=1, max_length=1024)]


@command("sessions.get", SessionIdArgs)
async def sessions_get(ctx: RequestContext, args: SessionIdArgs) -> Session:
    """One session with its state."""
    found: Session | None = await _store(ctx).sessions.get(args.id)
    if found is None:
        raise CommandError("not_found", f"no session {args.id!r}")
    return found


class SessionPutArgs(_Args, frozen=True):
    id: Annotated[str, Meta(min_length=1, max_length=1024)]
    state: Any
    #: compare-and-set: the version the caller read (0: the session must not exist yet)
    expected_version: Annotated[int, Meta(ge=0)] | None = None
    ttl: Annotated[float, Meta(gt=0)] | None = None


@command("sessions.put", SessionPutArgs, role="admin")
async def sessions_put(ctx: RequestContext, args: SessionPutArgs) -> Session:
    """Create or replace a session (compare-and-set with ``expected_version``)."""
    stored: Session = await _store(ctx).sessions.put(
        args.id, args.state, expected_version=args.expected_version, ttl=args.ttl
    )
    return stored


@command("sessions.delete", SessionIdArgs, role="admin")
async def sessions_delete(ctx: RequestContext, args: SessionIdArgs) -> dict[str, Any]:
    """Remove a session."""
    if not await _store(ctx).sessions.delete(args.id):
        raise CommandError("not_found", f"no session {args.id!r}")
    return {"deleted": args.id}


# -- journals --------------------------------------------------------------------------------
class JournalArgs(_Args, frozen=True):
    #: Unix times; ``since`` inclusive, ``until`` exclusive
    since: float | None = None
    until: float | None = None
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 100


class ObservationsArgs(JournalArgs, frozen=True):
    tick_from: Annotated[int, Meta(ge=0)] | None = None
    tick_to: Annotated[int, Meta(ge=0)] | None = None


@command("journal.observations", ObservationsArgs)
async def journal_observations(ctx: RequestContext, args: ObservationsArgs) -> Any:
    """Journaled observations, by time range or tick range."""
    rows: Any = await _store(ctx).query_observations(
        since=args.since,
        until=args.until,
        tick_from=args.tick_from,
        tick_to=args.tick_to,
        limit=args.limit,
    )
    return rows


@command("journal.actions", JournalArgs)
async def journal_actions(ctx: RequestContext, args: JournalArgs) -> Any:
    """The action journal: what the agent did, with results."""
    rows: Any = await _store(ctx).query_actions(
        since=args.since, until=args.until, limit=args.limit
    )
    return rows


@command("flush", role="admin")
async def flush(ctx: RequestContext, args: None) -> dict[str, Any]:
    """Commit everything queued for the store now."""
    await _store(ctx).flush()
    return {"flushed": True}


# -- the loop --------------------------------------------------------------------------------
@command("tick", role="admin")
async def tick(ctx: RequestContext, args: None) -> TickReport:
    """Run one perceive -> decide -> act now, outside the schedule."""
    return await ctx.facade.tick()


@command("pause", role="admin")
def pause(ctx: RequestContext, args: None) -> dict[str, Any]:
    """Pause the loop (no ticks until resume)."""
    changed = ctx.facade.pause()
    return {"state": "paused", "changed": changed}


@command("resume", role="admin")
def resume(ctx: RequestContext, args: None) -> dict[str, Any]:
    """Resume a paused loop on its original tick phase."""
    changed = ctx.facade.resume()
    return {"state": "running", "changed": changed}


@command("reload", role="admin")
async def reload(ctx: RequestContext, args: None) -> dict[str, Any]:
    """Re-read the config (the SIGHUP path); error ``invalid_config`` lists what is wrong."""
    errors, generation = await ctx.facade.reload()
    if errors:
        raise CommandError(
            "invalid_config",
            f"reload refused, still running the previous config: {errors[0]}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            errors,
        )
    return {"reloaded": True, "generation": generation}


class ActArgs(_Args, frozen=True):
    actuator: Annotated[str, Meta(min_length=1)]
    action: Annotated[str, Meta(min_length=1)]
    params: dict[str, Any] = {}
    priority: int = 0
    key: str | None = None
    deadline: float | None = None


@command("act", ActArgs, role="admin")
async def act(ctx: RequestContext, args: ActArgs) -> ActionResult:
    """A manual tool call, validated against the actuator's params schema; the result has
    status ``rejected`` with the validation message when the params are wrong."""
    facade = ctx.facade
    if not facade.has_actuator(args.actuator):
        problem = facade.validate_action(Action(actuator=args.actuator, name=args.action))
        raise CommandError("not_found", problem or f"no actuator named {args.actuator!r}")
    action = Action(
        actuator=args.actuator,
        name=args.action,
        params=args.params,
        priority=args.priority,
        key=args.key,
        deadline=args.deadline,
        source=f"agentctl (uid {ctx.peer.uid})",
    )
    return await facade.act(action)


# -- watch -----------------------------------------------------------------------------------
EVENT_KINDS = frozenset({"tick", "action", "state"})


class WatchArgs(_Args, frozen=True):
    events: tuple[str, ...] = tuple(sorted(EVENT_KINDS))


@command("watch", WatchArgs)
def watch(ctx: RequestContext, args: WatchArgs) -> dict[str, Any]:
    """Stream events (``tick``, ``action``, ``state``) on this connection until it closes. A
    client that stops reading is dropped once ``control.watch_buffer`` events wait for it."""
    unknown = sorted(set(args.events) - EVENT_KINDS)
    if unknown:
        raise CommandError(
            "bad_args", f"watch: unknown event kinds {unknown} (known: {sorted(EVENT_KINDS)})"
        )
    kinds = frozenset(args.events)
    ctx.conn.add_watch(ctx.request.id, kinds)
    return {"watching": sorted(kinds), "buffer": ctx.server.config.watch_buffer}
