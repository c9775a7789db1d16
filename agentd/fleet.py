"""`FleetCommands`: the fleet command channel of a running daemon (agentd/uplink/commands.py).

It is the engine factory the daemon gives `agentd.uplinking.Uplinks`: the uplink that carries
commands (``[commands] uplink``, default: the only ``mqtt`` one) gets its transport wrapped in
a `CommandLink`, so commands arrive on the uplink's own connection; the others are built as
before. Commands act through a `ControlApi` of their own (the same validation, idempotency and
journal as `agentctl act`), and ``config`` reloads through the daemon's SIGHUP path. The
`Rollout` (versions, probation, history) outlives the engines: a reload that restarts the
uplink keeps the probation running.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, final

from agentd.config import CommandsConfig, loads
from agentd.errors import ConfigError
from agentd.lifecycle import DaemonState
from agentd.model import ConfigVersion, FleetCommand, HealthReport
from agentd.plugins.registry import default_registry
from agentd.plugins.transport import UplinkRunner
from agentd.store import Store
from agentd.uplink import UplinkEngine
from agentd.uplink.cmdlink import CommandLink, build_command_channel
from agentd.uplink.commands import CommandChannel
from agentd.uplink.mqtt import MqttTransport
from agentd.uplink.rollout import ConfigView, Rollout

if TYPE_CHECKING:
    from agentd.control.api import ControlApi
    from agentd.daemon import Daemon

__all__ = ["DaemonTarget", "FleetCommands"]

log = logging.getLogger("agentd.uplink.commands")


@final
class DaemonTarget:
    """`agentd.uplink.rollout.ConfigTarget` for the daemon."""

    def __init__(self, daemon: Daemon, api: ControlApi) -> None:
        self._daemon = daemon
        self._api = api

    def config_path(self) -> Path | None:
        path = self._daemon.options.config_path
        return Path(path) if path else None

    def validate(self, text: str) -> list[str]:
        """What ``agentd check-config`` says of this text."""
        if not text.strip():
            return ["the config is empty (configure at least one sensor)"]
        try:
            loads(text, default_registry, source="the config from the fleet")
        except ConfigError as exc:
            return exc.errors
        return []

    async def reload(self, path: str | None) -> list[str]:
        return await self._daemon.reload(path)

    def health(self) -> HealthReport:
        return self._api.health()

    def source(self) -> str:
        return self._daemon.config.source


@final
class FleetCommands:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._api: ControlApi | None = None
        self.rollout: Rollout | None = None
        self.channel: CommandChannel | None = None

    def _accepting(self) -> bool:
        return self._daemon.state not in (DaemonState.STOPPING, DaemonState.STOPPED)

    def _config(self) -> CommandsConfig:
        return self._daemon.config.commands

    def _carrier(self) -> str | None:
        want = self._config().uplink
        if want is not None:
            return want
        mqtt = [n for n, i in self._daemon.config.section("uplinks").items() if i.plugin == "mqtt"]
        return mqtt[0] if len(mqtt) == 1 else None

    def api(self) -> ControlApi:
        if self._api is None:
            from agentd.control.api import ControlApi

            d = self._daemon
            assert d.loop is not None
            self._api = ControlApi(
                loop=d.loop,
                plugins=d.supervisor,
                store=d.store,
                telemetry=d.telemetry,
                registry=d.registry,
                lifecycle=d,
                uplinks=d.uplink_states,
                fleet=self,
            )
        return self._api

    def engine(self, name: str, handle: UplinkRunner, store: Store) -> UplinkEngine:
        """The `agentd.uplinking.EngineFactory`."""
        transport = handle.obj
        if name != self._carrier() or not isinstance(transport, MqttTransport):
            return UplinkEngine(name, handle.settings, transport, store)
        if self.channel is None:
            api = self.api()
            self.channel, link, self.rollout = build_command_channel(
                settings=handle.settings,
                transport=transport,
                host=api,
                store=store,
                config=self._config,
                target=DaemonTarget(self._daemon, api),
                state_dir=self._daemon.state_dir,
                accepting=self._accepting,
            )
        else:  # a reload rebuilt the transport: the same channel (and probation) on the new one
            link = CommandLink(transport, self.channel)
        engine = UplinkEngine(name, handle.settings, link, store, config_view=self.config_view)
        self.channel.verbs.uplink_state = engine.state
        if self.rollout is not None:
            self.rollout.on_change = engine.publish_status
        log.info("commands: listening on %s", ", ".join(self.channel.filters()))
        return engine

    # -- the operator's view (agentctl commands, agentctl config history) ------------------
    def config_view(self) -> ConfigView | None:
        return self.rollout.view() if self.rollout is not None else None

    def recent(self) -> list[FleetCommand]:
        return list(self.channel.recent) if self.channel is not None else []

    def history(self) -> list[ConfigVersion]:
        return self.rollout.history() if self.rollout is not None else []
