"""`webhook` actuator: HTTP POST of the action as JSON to a configured URL, through the shared
HTTP client (agentd/plugins/builtin/_http.py: asyncio streams, one connection per call, https
with certificate checks, headers from the config, a systemd credential or a file, all secret).
A 2xx answer is success; anything else, a refused connection or a timeout fails the call, and
the instance's ``retries``/``retry_on`` decide whether it is tried again.

The body is ``{"actuator", "action", "params", "priority", "source", "key", "sent_at"}``; the
idempotency key also goes in an ``Idempotency-Key`` header so the receiver can deduplicate.

An error never quotes a secret: the URL is shown without its ``user:password@``, and a response
body is quoted only as a short excerpt with its tags stripped and every header value taken out
(the journalled body too)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.plugins.builtin._http import EXCERPT, HTTPClient, HTTPClientConfig, HTTPError
from agentd.secrets import SECRET_URL

__all__ = ["EXCERPT", "SPEC", "HTTPError", "WebhookActuator", "WebhookConfig"]


class WebhookConfig(HTTPClientConfig, forbid_unknown_fields=True, kw_only=True):
    #: the ``user:password@`` part of it is secret (and is not sent: use a header)
    url: Annotated[str, SECRET_URL]

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"`url` {self.url!r} is not an http:// or https:// URL")
        self.check_headers()


class WebhookParams(msgspec.Struct, kw_only=True):
    """Any params are sent as they are."""


class _Body(msgspec.Struct, kw_only=True):
    actuator: str
    action: str
    params: dict[str, object]
    priority: int
    source: str
    key: str | None
    sent_at: float


class WebhookActuator:
    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.http = HTTPClient(config, config.url)

    async def start(self) -> None:
        await asyncio.to_thread(self.http.load_secrets)

    async def act(self, action: Action) -> ActuatorReply:
        body = msgspec.json.encode(
            _Body(
                actuator=action.actuator,
                action=action.name,
                params=action.params,
                priority=action.priority,
                source=action.source,
                key=action.key,
                sent_at=time.time(),
            )
        )
        extra: dict[str, str] = {}
        if action.key and action.key.isprintable() and action.key.isascii():
            extra["Idempotency-Key"] = action.key  # never a CR/LF into the request head
        res = await self.http.send("POST", self.config.url, body, extra)
        text = res.body.decode("utf-8", "replace")
        if not 200 <= res.status < 300:
            shown = self.http.shown_url
            raise HTTPError(f"{shown} answered {res.status}: {self.http.excerpt(text)}")
        # a server may echo the request: the journal keeps the body without the secrets
        return ActuatorReply(output={"status": res.status, "body": self.http.redact(text)})


SPEC = PluginSpec(
    name="webhook",
    kind="actuator",
    factory=WebhookActuator,
    config_type=WebhookConfig,
    description="POST the action as JSON to a URL (http/https, timeout, retries)",
    actions={"*": WebhookParams},
)
