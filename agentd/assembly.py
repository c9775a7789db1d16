"""How the daemon's rooms are put together: the perception loop with every collaborator it
will have, telemetry, the control plane over a `ControlApi`. `agentd.daemon.Daemon` calls these
in startup order and owns what they return; nothing here starts, runs or stops anything."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agentd.config import Config
from agentd.lifecycle import loop_settings
from agentd.loop import PerceptionLoop, TickObserver

if TYPE_CHECKING:
    from agentd.control.server import ControlServer
    from agentd.daemon import Daemon
    from agentd.telemetry import Telemetry

__all__ = ["build_control", "build_loop", "build_telemetry"]


def build_loop(daemon: Daemon) -> PerceptionLoop:
    """The loop with every collaborator it will have: the store's journal and key ledger,
    the watch fan-out, the systemd notifier, telemetry's tracer and action hook."""
    store, telemetry, sup = daemon.store, daemon.telemetry, daemon.supervisor
    observers: list[TickObserver] = []
    if store is not None:
        from agentd.journaling import TickJournal

        observers.append(TickJournal(store, sup.policies))
    observers.append(daemon.fanout)
    if daemon.systemd is not None:
        observers.append(daemon.systemd)
    return PerceptionLoop(
        loop_settings(daemon.config),
        sup.sensors(),
        sup.policies(),
        sup.actuators(),
        observers=observers,
        tracer=telemetry,
        ledger=store,
        action_hook=telemetry.run_action if telemetry is not None else None,
        # agentctl act: results outside a tick go to the action journal too
        manual_sinks=[store.journal_result] if store is not None else [],
        executor=daemon.executor,
    )


def build_telemetry(config: Config, state_dir: Path) -> Telemetry | None:
    """Providers and exporters (before the loop: it traces every tick from the first). A
    missing OTLP extra is a ConfigError: agentd refuses to start."""
    if not config.telemetry.enabled:
        return None
    from agentd.telemetry import Telemetry

    return Telemetry(config.telemetry, state_dir)


def build_control(daemon: Daemon) -> ControlServer | None:
    """The control server over a `ControlApi` of the running daemon (after the loop exists:
    the API reads it); None when [control] enabled = false. The daemon starts it."""
    c = daemon.config.control
    if not c.enabled or daemon.loop is None:
        return None
    from agentd.control.api import ControlApi
    from agentd.control.server import ControlServer
    from agentd.paths import socket_path

    api = ControlApi(
        loop=daemon.loop,
        plugins=daemon.supervisor,
        store=daemon.store,
        telemetry=daemon.telemetry,
        registry=daemon.registry,
        lifecycle=daemon,
        uplinks=daemon.uplink_states,
        fleet=daemon.fleet,
    )
    # `agentctl watch` hears ticks and late results through the fan-out the loop was
    # built with; the control plane never touches the loop's own collaborators
    daemon.fanout.subscribe(api)
    # telemetry makes a span per request
    hooks = [daemon.telemetry.request_hook] if daemon.telemetry is not None else []
    path = socket_path(daemon.runtime_dir, c.socket)
    return ControlServer(api, c, path, hooks=hooks)
