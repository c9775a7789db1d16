"""Commands on the uplink's own connection: `CommandLink` wraps the uplink's transport so each
new connection also subscribes the command topics, and `build_command_channel` assembles the
channel for an engine (what the daemon calls; tests call it too).

The engine is unchanged: it sees a transport whose ``connect`` subscribes a few more topics.
A broker ACL that refuses ``cmd/+`` does not stop the uplink: the refusal is logged once and
shown as the channel's ``subscribe_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from agentd.config import CommandsConfig
from agentd.store import Store
from agentd.uplink.base import Delivery, Link, Message, TransportError, Uplink
from agentd.uplink.commands import CommandChannel, CommandHost
from agentd.uplink.config import UplinkSettings
from agentd.uplink.inbound import InboundSink
from agentd.uplink.rollout import ConfigTarget, Rollout
from agentd.uplink.verbs import Replayer, Verbs

__all__ = ["CommandLink", "CommandTransport", "build_command_channel"]

log = logging.getLogger("agentd.uplink.commands")


class CommandTransport(Uplink, Protocol):
    """A transport that can carry commands (the built-in mqtt one)."""

    def set_inbound(self, sink: InboundSink | None) -> None: ...


class CommandLink:
    """Implements `Uplink` around ``inner``; give it to the engine instead of ``inner``."""

    def __init__(self, inner: CommandTransport, channel: CommandChannel) -> None:
        self.inner = inner
        self.channel = channel
        inner.set_inbound(channel.take)
        channel.attach(inner.send)

    async def connect(
        self, client_id: str, will: Message, on_message: Callable[[str, bytes], None]
    ) -> Link:
        link = await self.inner.connect(client_id, will, on_message)
        problems: list[str] = []
        for topic in self.channel.filters():
            try:
                await self.inner.subscribe(topic)
            except TransportError as exc:
                if not exc.refused:
                    raise
                problems.append(f"{topic}: {exc}")
        error = "; ".join(problems) or None
        if error and error != self.channel.subscribe_error:
            log.error("commands: cannot subscribe: %s (commands are off)", error)
        self.channel.subscribe_error = error
        return link

    def send(self, message: Message) -> Awaitable[Delivery]:
        return self.inner.send(message)

    async def subscribe(self, topic: str) -> None:
        await self.inner.subscribe(topic)

    async def wait_lost(self) -> str:
        return await self.inner.wait_lost()

    async def close(self, timeout: float) -> None:
        await self.inner.close(timeout)
        if not self.channel.accepting():  # agentd stops: end what is still running
            await self.channel.stop()


def build_command_channel(
    *,
    settings: UplinkSettings,
    transport: CommandTransport,
    host: CommandHost,
    store: Store,
    config: Callable[[], CommandsConfig],
    target: ConfigTarget | None,
    state_dir: Path,
    accepting: Callable[[], bool] = lambda: True,
) -> tuple[CommandChannel, CommandLink, Rollout | None]:
    """The channel, the link to give the engine as its transport, and the rollout (None when
    there is no config target). A transport rebuilt later (a reload) gets a new
    ``CommandLink(transport, channel)``: the channel, its records and probation stay.
    Then ``channel.verbs.uplink_state = engine.state``."""
    rollout = (
        Rollout(
            target,
            state_dir,
            default_probation=lambda: config().probation,
            journal_event=store.journal_event,
        )
        if target is not None
        else None
    )
    node = settings.resolved_node()
    base = f"{settings.prefix.rstrip('/')}/{node}"
    channel: CommandChannel | None = None

    def send(message: Message) -> Awaitable[Delivery]:
        assert channel is not None
        return channel.send(message)

    replayer = Replayer(
        store,
        send,
        node=node,
        topics={s: f"{base}/{s}" for s in settings.streams},
        fmt=settings.format,
        max_rows=lambda: config().replay_max_rows,
    )
    verbs = Verbs(host=host, uplink=lambda: None, replayer=replayer, rollout=rollout)
    channel = CommandChannel(
        node=node,
        prefix=settings.prefix,
        config=config,
        host=host,
        store=store,
        verbs=verbs,
        accepting=accepting,
    )
    return channel, CommandLink(transport, channel), rollout
