"""One function per control command. Each gets the `RequestContext` and its validated args
Struct and returns a reply Struct (or a coroutine of one); errors are raised as `CommandError`.
Everything they read of the daemon comes through ``ctx.api`` (`ControlApi`).

`COMMANDS` is the table the server starts from; `ControlServer.add_command` extends a running
server's table (tests do; the daemon's own commands are all here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import msgspec
from msgspec import Meta

from agentd import __version__
from agentd.control.commands import Command, CommandError, Handler, RequestContext, Role
from agentd.control.protocol import (
    PROTOCOL_VERSION,
    CommandInfo,
    Deleted,
    EventKind,
    Flushed,
    HelloInfo,
    LoopChange,
    Reloaded,
    ServerLimits,
    WatchStarted,
)
from agentd.model import (
    Action,
    ActionResult,
    ConfigVersion,
    FleetCommand,
    HealthReport,
    MetricPoint,
    Observation,
    PluginDetail,
    PluginInfo,
    Session,
    StatusReport,
    TickReport,
    UplinkStatus,
)

if TYPE_CHECKING:
    from agentd.store import Store

__all__ = ["COMMANDS", "EVENT_KINDS", "command"]

COMMANDS: dict[str, Command] = {}

H = TypeVar("H", bound=Handler)
T = TypeVar("T")


def command(
    name: str, args: type[msgspec.Struct] | None = None, role: Role = "read", help: str = ""
) -> Callable[[H], H]:
    def register(fn: H) -> H:
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
def hello(ctx: RequestContext, args: HelloArgs) -> HelloInfo:
    """Protocol version, server version, the caller's role and the commands it may use."""
    if args.protocol != PROTOCOL_VERSION:
        raise CommandError(
            "unsupported_version",
            f"this agentd speaks protocol {PROTOCOL_VERSION}, the client asked for {args.protocol}",
        )
    state = ctx.state
    return HelloInfo(
        protocol=PROTOCOL_VERSION,
        server=f"agentd {__version__}",
        pid=os.getpid(),
        role=ctx.role,
        uid=ctx.peer.uid,
        commands={
            name: CommandInfo(role=c.role, help=c.help)
            for name, c in sorted(state.commands.items())
        },
        limits=ServerLimits(
            max_frame=state.max_frame,
            max_connections=state.config.max_connections,
            idle_timeout=state.config.idle_timeout,
            watch_buffer=state.config.watch_buffer,
        ),
    )


# -- reads -----------------------------------------------------------------------------------
@command("status")
def status(ctx: RequestContext, args: None) -> StatusReport:
    """Version, PID, uptime, state, config, reload generation, tick statistics, plugins, store
    health, process RSS/CPU and control-plane counters."""
    return msgspec.structs.replace(ctx.api.status(), control=ctx.state.stats())


@command("plugins")
def plugins(ctx: RequestContext, args: None) -> list[PluginInfo]:
    """The configured plugin instances with their state and error counts."""
    return ctx.api.plugins()


class PluginArgs(_Args, frozen=True):
    name: str


@command("plugin", PluginArgs)
def plugin(ctx: RequestContext, args: PluginArgs) -> PluginDetail:
    """One plugin instance: status, config and JSON Schema."""
    found = ctx.api.plugin(args.name)
    if found is None:
        known = ", ".join(sorted(p.name for p in ctx.api.plugins())) or "none"
        raise CommandError("not_found", f"no plugin named {args.name!r} (configured: {known})")
    return found


class UplinkArgs(_Args, frozen=True):
    #: one uplink (default: all of them)
    name: str | None = None


@command("uplink", UplinkArgs)
def uplink(ctx: RequestContext, args: UplinkArgs) -> list[UplinkStatus]:
    """The uplinks: per uplink and stream, connected since, acked id, backlog, in flight,
    reconnects, duplicates, gap rows, last error."""
    states = ctx.api.uplinks()
    if args.name is None:
        return states
    found = [u for u in states if u.name == args.name]
    if not found:
        known = ", ".join(u.name for u in states) or "none"
        raise CommandError("not_found", f"no uplink named {args.name!r} (running: {known})")
    return found


# -- sessions --------------------------------------------------------------------------------
def _store(ctx: RequestContext) -> Store:
    store = ctx.api.store
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
    return await _store(ctx).sessions.list(prefix=args.prefix, limit=args.limit, after=args.after)


class SessionIdArgs(_Args, frozen=True):
    id: Annotated[str, Meta(min_length=1, max_length=1024)]


@command("sessions.get", SessionIdArgs)
async def sessions_get(ctx: RequestContext, args: SessionIdArgs) -> Session:
    """One session with its state."""
    found = await _store(ctx).sessions.get(args.id)
    if found is None:
        raise CommandError("not_found", f"no session {args.id!r}")
    return found


class SessionPutArgs(_Args, frozen=True):
    id: Annotated[str, Meta(min_length=1, max_length=1024)]
    #: any msgpack value (stored as given)
    state: object
    #: compare-and-set: the version the caller read (0: the session must not exist yet)
    expected_version: Annotated[int, Meta(ge=0)] | None = None
    ttl: Annotated[float, Meta(gt=0)] | None = None


@command("sessions.put", SessionPutArgs, role="admin")
async def sessions_put(ctx: RequestContext, args: SessionPutArgs) -> Session:
    """Create or replace a session (compare-and-set with ``expected_version``)."""
    return await _store(ctx).sessions.put(
        args.id, args.state, expected_version=args.expected_version, ttl=args.ttl
    )


@command("sessions.delete", SessionIdArgs, role="admin")
async def sessions_delete(ctx: RequestContext, args: SessionIdArgs) -> Deleted:
    """Remove a session."""
    if not await _store(ctx).sessions.delete(args.id):
        raise CommandError("not_found", f"no session {args.id!r}")
    return Deleted(deleted=args.id)


# -- journals --------------------------------------------------------------------------------
class JournalArgs(_Args, frozen=True):
    #: Unix times; ``since`` inclusive, ``until`` exclusive
    since: float | None = None
    until: float | None = None
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 100
    #: the newest ``limit`` rows of the range (as ``journalctl -n``), else the oldest
    newest: bool = False
    #: newest first (else oldest first), whichever rows were picked
    reverse: bool = False


def _ordered(rows: list[T], args: JournalArgs) -> list[T]:
    """The store gives the newest rows newest first: flip them unless asked to reverse."""
    return rows[::-1] if args.newest != args.reverse else rows


class ObservationsArgs(JournalArgs, frozen=True):
    tick_from: Annotated[int, Meta(ge=0)] | None = None
    tick_to: Annotated[int, Meta(ge=0)] | None = None


@command("journal.observations", ObservationsArgs)
async def journal_observations(ctx: RequestContext, args: ObservationsArgs) -> list[Observation]:
    """Journaled observations, by time range or tick range."""
    rows = await _store(ctx).query_observations(
        since=args.since,
        until=args.until,
        tick_from=args.tick_from,
        tick_to=args.tick_to,
        limit=args.limit,
        newest_first=args.newest,
    )
    return _ordered(rows, args)


@command("journal.actions", JournalArgs)
async def journal_actions(ctx: RequestContext, args: JournalArgs) -> list[ActionResult]:
    """The action journal: what the agent did, with results."""
    rows = await _store(ctx).query_actions(
        since=args.since, until=args.until, limit=args.limit, newest_first=args.newest
    )
    return _ordered(rows, args)


@command("flush", role="admin")
async def flush(ctx: RequestContext, args: None) -> Flushed:
    """Commit everything queued for the store now."""
    await _store(ctx).flush()
    return Flushed(flushed=True)


# -- the loop --------------------------------------------------------------------------------
@command("tick", role="admin")
async def tick(ctx: RequestContext, args: None) -> TickReport:
    """Run one perceive -> decide -> act now, outside the schedule."""
    return await ctx.api.tick()


@command("pause", role="admin")
def pause(ctx: RequestContext, args: None) -> LoopChange:
    """Pause the loop (no ticks until resume)."""
    return LoopChange(state="paused", changed=ctx.api.pause())


@command("resume", role="admin")
def resume(ctx: RequestContext, args: None) -> LoopChange:
    """Resume a paused loop on its original tick phase."""
    return LoopChange(state="running", changed=ctx.api.resume())


@command("reload", role="admin")
async def reload(ctx: RequestContext, args: None) -> Reloaded:
    """Re-read the config (the SIGHUP path); error ``invalid_config`` lists what is wrong."""
    errors, generation = await ctx.api.reload()
    if errors:
        raise CommandError(
            "invalid_config",
            f"reload refused, still running the previous config: {errors[0]}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            errors,
        )
    return Reloaded(reloaded=True, generation=generation)


class ActArgs(_Args, frozen=True):
    actuator: Annotated[str, Meta(min_length=1)]
    action: Annotated[str, Meta(min_length=1)]
    params: dict[str, object] = {}
    priority: int = 0
    key: str | None = None
    deadline: float | None = None


@command("act", ActArgs, role="admin")
async def act(ctx: RequestContext, args: ActArgs) -> ActionResult:
    """A manual tool call, validated against the actuator's params schema; the result has
    status ``rejected`` with the validation message when the params are wrong."""
    api = ctx.api
    if not api.has_actuator(args.actuator):
        problem = api.validate_action(Action(actuator=args.actuator, name=args.action))
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
    return await api.act(action)


# -- telemetry -------------------------------------------------------------------------------
@command("health")
def health(ctx: RequestContext, args: None) -> HealthReport:
    """ok / degraded / failing with the reasons, from the [health] thresholds"""
    return ctx.api.health()


@command("metrics")
async def metrics(ctx: RequestContext, args: None) -> list[MetricPoint]:
    """agentd's own metrics (OpenTelemetry names) as they are now"""
    points = await ctx.api.metrics()
    if points is None:
        raise CommandError("unavailable", "telemetry is off ([telemetry] enabled = false)")
    return points


# -- the fleet's commands (agentd/fleet.py) --------------------------------------------------
@command("commands")
def commands(ctx: RequestContext, args: None) -> list[FleetCommand]:
    """recent commands from the fleet (MQTT) and their outcomes, oldest first"""
    fleet = ctx.api.fleet
    return fleet.recent() if fleet is not None else []


@command("config_history")
def config_history(ctx: RequestContext, args: None) -> list[ConfigVersion]:
    """config versions pushed by the fleet: on probation, committed, rolled back, refused"""
    fleet = ctx.api.fleet
    return fleet.history() if fleet is not None else []


# -- watch -----------------------------------------------------------------------------------
EVENT_KINDS: frozenset[EventKind] = frozenset({"tick", "action", "state"})


class WatchArgs(_Args, frozen=True):
    events: tuple[str, ...] = tuple(sorted(EVENT_KINDS))


@command("watch", WatchArgs)
def watch(ctx: RequestContext, args: WatchArgs) -> WatchStarted:
    """Stream events (``tick``, ``action``, ``state``) on this connection until it closes. A
    client that stops reading is dropped once ``control.watch_buffer`` events wait for it."""
    unknown = sorted(set(args.events) - EVENT_KINDS)
    if unknown:
        raise CommandError(
            "bad_args",
            f"watch: unknown event kind {', '.join(unknown)} "
            f"(known: {', '.join(sorted(EVENT_KINDS))})",
        )
    kinds = frozenset(args.events)
    ctx.conn.add_watch(ctx.request.id, kinds)
    return WatchStarted(watching=sorted(kinds), buffer=ctx.state.config.watch_buffer)
