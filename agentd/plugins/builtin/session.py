"""`session` actuator: write a value into the agent's session store (or delete a session), e.g.
a policy recording "maintenance mode on" for other parts of the agent and for `agentctl
sessions`. It gets a narrow `SessionAccess` handle from the daemon (``requires=("sessions",)``),
never the store or the daemon. Session ids are confined to the configured ``prefix``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec, SessionAccess

__all__ = ["SPEC", "SessionActuator", "SessionConfig"]


class SessionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: ids written are ``prefix + params.session`` (default ``actions/``)
    prefix: str = "actions/"
    #: seconds until a written session expires (none: never); an action may shorten it
    ttl: Annotated[float, Meta(gt=0)] | None = None


class PutParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    session: Annotated[str, Meta(min_length=1, max_length=200)]
    value: Any
    ttl: Annotated[float, Meta(gt=0)] | None = None


class DeleteParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    session: Annotated[str, Meta(min_length=1, max_length=200)]


class SessionActuator:
    def __init__(self, config: SessionConfig, sessions: SessionAccess) -> None:
        self.config = config
        self.sessions = sessions

    def validate(self, action: Action) -> str | None:
        sid = action.params.get("session")
        if isinstance(sid, str) and ("\x00" in sid or ".." in sid.split("/")):
            return f"{action.name}.params.session: {sid!r} is not a valid session id"
        return None

    async def act(self, action: Action) -> ActuatorReply:
        sid = self.config.prefix + str(action.params["session"])
        if action.name == "delete":
            existed = await self.sessions.delete(sid)
            return ActuatorReply(output={"session": sid, "deleted": existed})
        ttl = action.params.get("ttl") or self.config.ttl
        if self.config.ttl is not None and ttl is not None:
            ttl = min(ttl, self.config.ttl)
        version = await self.sessions.put(sid, action.params.get("value"), ttl)
        return ActuatorReply(output={"session": sid, "version": version})


SPEC = PluginSpec(
    name="session",
    kind="actuator",
    factory=SessionActuator,
    config_type=SessionConfig,
    description="write a value into (or delete) a session in agentd's session store",
    actions={"put": PutParams, "delete": DeleteParams},
    requires=("sessions",),
)
