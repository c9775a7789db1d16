"""The fleet command channel: commands on the uplink's own MQTT connection, refused unless
allowed, signed (when so configured), in time and within the rate; an ``act`` id runs once.

Flow of one message (docs/uplink.md, "Commands"): the transport hands every inbound message to
`CommandChannel.take` first (``inbound.py``); one on a command topic is taken and handled in a
task of its own, bounded by ``max_concurrent``. The checks run in a fixed order (retained,
verb, size, signature, payload, deadline, allow-list, rate) and the first that fails is the
one-line reason of the reply. ``act`` and ``config`` claim ``mqtt:<id>`` durably in the store's
action keys before they do anything, and only then is the MQTT message acknowledged: a broker
that redelivers it, or a fleet that resends it after agentd restarted, gets the recorded outcome
and nothing runs twice. Every command and its outcome go to the events journal (and so up the
uplink); an action's result goes to the action journal with the source ``mqtt:<sender>``.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import msgspec

from agentd.config import CommandsConfig
from agentd.errors import ConfigError, StoreError
from agentd.model import (
    Action,
    ActionResult,
    FleetCommand,
    HealthReport,
    StatusReport,
    UplinkStatus,
)
from agentd.store import Store
from agentd.uplink import cmdproto as cp
from agentd.uplink.base import Delivery, Message, TransportError
from agentd.uplink.inbound import Ack, Inbound
from agentd.uplink.keys import read_key
from agentd.uplink.verbs import Verbs, result_reply

__all__ = ["CLAIM_NS", "CommandChannel", "CommandHost"]

log = logging.getLogger("agentd.uplink.commands")

#: the action_keys "actuator" under which command ids are claimed (no actuator can be named so)
CLAIM_NS: Final = "@mqtt"
RECENT: Final = 200
#: outcomes kept in memory for duplicates (older ones are looked up in the action journal)
OUTCOMES: Final = 1000
REPLY_TIMEOUT: Final = 10.0
MSGPACK: Final = "application/msgpack"


class CommandHost(Protocol):
    """What a command may see and do of the daemon (`agentd.control.api.ControlApi` is one)."""

    def status(self) -> StatusReport: ...

    def health(self) -> HealthReport: ...

    def has_actuator(self, name: str) -> bool: ...

    def validate_action(self, action: Action) -> str | None: ...

    async def act(self, action: Action) -> ActionResult: ...


class _Refused(Exception):
    def __init__(self, reply: cp.Reply) -> None:
        self.reply = reply


class CommandChannel:
    def __init__(
        self,
        *,
        node: str,
        prefix: str,
        config: Callable[[], CommandsConfig],
        host: CommandHost,
        store: Store,
        verbs: Verbs,
        clock: Callable[[], float] = time.time,
        accepting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node = node
        self.prefix = prefix.rstrip("/")
        self._config = config
        self.host = host
        self.store = store
        self.verbs = verbs
        self._clock = clock
        #: False once agentd is stopping: commands are refused, none is started
        self.accepting = accepting
        self._send: Callable[[Message], Awaitable[Delivery]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrivals: collections.deque[float] = collections.deque()
        self._running: dict[str, asyncio.Future[cp.Reply]] = {}
        self._outcomes: collections.OrderedDict[str, cp.Reply] = collections.OrderedDict()
        self._claimed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.recent: collections.deque[FleetCommand] = collections.deque(maxlen=RECENT)
        self.counts: collections.Counter[str] = collections.Counter()
        self.subscribe_error: str | None = None
        #: when each refusal code was last logged at WARNING (a flood logs once a minute)
        self._logged: dict[str, float] = {}

    # -- topics ------------------------------------------------------------------------------
    def filters(self) -> list[str]:
        groups = self._config().groups
        return [f"{self.prefix}/{self.node}/cmd/+"] + [
            f"{self.prefix}/group/{g}/cmd/+" for g in groups
        ]

    def _verb_of(self, topic: str) -> str | None:
        bases = [f"{self.prefix}/{self.node}/cmd/"]
        bases += [f"{self.prefix}/group/{g}/cmd/" for g in self._config().groups]
        for base in bases:
            if topic.startswith(base):
                verb = topic[len(base) :]
                return verb if "/" not in verb else None
        return None

    def attach(self, send: Callable[[Message], Awaitable[Delivery]]) -> None:
        """How replies (and replays) go out: the current transport's ``send``."""
        self._send = send

    def send(self, message: Message) -> Awaitable[Delivery]:
        if self._send is None:
            raise TransportError("not connected")
        return self._send(message)

    # -- intake (on the loop, from the transport's callback) -----------------------------------
    def take(self, msg: Inbound, ack: Ack) -> bool:
        verb = self._verb_of(msg.topic)
        if verb is None:
            return False
        cfg = self._config()
        if not self.accepting():
            ack()
            self._refuse_now(msg, verb, "unavailable", "agentd is stopping")
            return True
        if len(self._tasks) >= cfg.max_concurrent:
            ack()
            self._refuse_now(msg, verb, "busy", f"more than {cfg.max_concurrent} commands at once")
            return True
        task = asyncio.get_running_loop().create_task(self._handle(msg, verb, ack))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _refuse_now(self, msg: Inbound, verb: str, code: cp.ErrorCode, why: str) -> None:
        cid = cp.salvage_id(msg.payload, msg.content_type == MSGPACK)
        reply = cp.error_reply(cid, code, why)
        task = asyncio.get_running_loop().create_task(
            self._finish(msg, verb, _sender(msg, None), reply)
        )
        self._tasks.add(task)  # bounded: one tiny task per refused message, a reply each
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Inbound, verb: str, ack: Ack) -> None:
        acked = False

        def ack_once() -> None:
            nonlocal acked
            if not acked:
                acked = True
                ack()

        req: cp.AnyRequest | None = None
        try:
            req, deadline = self._check(msg, verb)
            if isinstance(req, cp.ActRequest):
                reply = await self._act(msg, req, deadline, ack_once)
            elif isinstance(req, cp.ConfigRequest):
                reply = await self._config_cmd(msg, req, ack_once)
            else:
                ack_once()
                reply = await self.verbs.simple(verb, req)
        except _Refused as exc:
            reply = exc.reply
        except Exception as exc:  # a bug must not lose the reply, nor the link
            log.exception("commands: %s on %s failed", verb, msg.topic)
            cid = req.id if req is not None else cp.salvage_id(msg.payload, False)
            reply = cp.error_reply(cid, "internal", f"internal error: {type(exc).__name__}")
        finally:
            ack_once()
        await self._finish(msg, verb, _sender(msg, req), reply)

    def _check(self, msg: Inbound, verb: str) -> tuple[cp.AnyRequest, float]:
        cfg = self._config()
        packed = msg.content_type == MSGPACK

        def refuse(code: cp.ErrorCode, why: str, cid: str | None = None) -> _Refused:
            return _Refused(cp.error_reply(cid or cp.salvage_id(msg.payload, packed), code, why))

        if msg.retain:
            raise refuse("malformed", "a retained command is ignored (publish with retain off)")
        if verb not in cp.VERBS:
            raise refuse("unknown_verb", f"no verb {verb!r} (known: {', '.join(cp.VERBS)})")
        if len(msg.payload) > cfg.max_payload:
            raise refuse("too_large", f"{len(msg.payload)} bytes; at most {cfg.max_payload}")
        if cfg.signature != "none":
            sig = msg.prop("signature")
            if sig is None:
                raise refuse("unsigned", "no signature user property (MQTT 5) and one is required")
            try:
                key = read_key(cfg)
            except ConfigError as exc:
                raise refuse("unavailable", str(exc)) from None
            if key is None or not cp.verify(key, msg.topic, msg.payload, sig):
                raise refuse("bad_signature", "the signature does not match (hmac-sha256)")
        got = cp.decode_request(verb, msg.payload, packed)
        if isinstance(got, str):
            raise refuse("malformed", got)
        req = got
        now = self._clock()
        deadline = req.deadline
        if msg.expiry is not None:
            expires = (msg.received or now) + msg.expiry
            deadline = expires if deadline is None else min(deadline, expires)
        if deadline is None:
            raise refuse("no_deadline", "a command needs a deadline (or an MQTT 5 expiry)", req.id)
        if now > deadline:
            raise refuse("expired", f"deadline passed {now - deadline:.1f}s ago", req.id)
        if deadline - now > cfg.max_deadline:
            raise refuse(
                "malformed",
                f"deadline is {deadline - now:.0f}s ahead; at most {cfg.max_deadline:g}s",
                req.id,
            )
        name = _allow_name(verb, req)
        if not any(_allowed(rule, name) for rule in cfg.allow):
            raise refuse("not_allowed", f"{name} is not in [commands] allow", req.id)
        while self._arrivals and now - self._arrivals[0] > 60.0:
            self._arrivals.popleft()
        if len(self._arrivals) >= cfg.rate_per_minute:
            raise refuse("rate_limited", f"more than {cfg.rate_per_minute} per minute", req.id)
        self._arrivals.append(now)
        return req, deadline

    # -- once-only ---------------------------------------------------------------------------
    def _seen(self, key: str) -> bool:
        return key in self._claimed or self.store.key_seen(CLAIM_NS, key)

    async def _claim(self, key: str) -> None:
        """Durably, before anything runs: raises _Refused if the store cannot commit it."""
        self._claimed[key] = None
        if len(self._claimed) > OUTCOMES:
            self._claimed.popitem(last=False)
        try:
            await self.store.write("claim", CLAIM_NS, key)
        except StoreError as exc:
            self._claimed.pop(key, None)
            raise _Refused(
                cp.error_reply(key[5:], "unavailable", f"cannot record the claim: {exc}")
            ) from None

    async def _duplicate(self, cid: str, key: str) -> cp.Reply | None:
        running = self._running.get(key)
        if running is not None:
            return _dup(await asyncio.shield(running))
        if not self._seen(key):
            return None
        if key in self._outcomes:
            return _dup(self._outcomes[key])
        since = self._clock() - self._config().max_deadline - 60.0
        try:
            for result in await self.store.query_actions(
                since=since, limit=2000, newest_first=True
            ):
                if result.action.key == key:
                    return _dup(result_reply(cid, result))
        except StoreError as exc:
            log.warning("commands: looking up the outcome of %s failed: %s", cid, exc)
        return _dup(
            cp.error_reply(
                cid,
                "in_doubt",
                f"{cid} was claimed earlier and no outcome is recorded (agentd stopped while it "
                "ran); it is not run again",
            )
        )

    def _remember(self, key: str, reply: cp.Reply) -> None:
        self._outcomes[key] = reply
        if len(self._outcomes) > OUTCOMES:
            self._outcomes.popitem(last=False)

    async def _act(self, msg: Inbound, req: cp.ActRequest, deadline: float, ack: Ack) -> cp.Reply:
        key = f"mqtt:{req.id}"
        dup = await self._duplicate(req.id, key)
        if dup is not None:
            return dup
        action = Action(
            actuator=req.actuator,
            name=req.action,
            params=req.params,
            priority=req.priority,
            deadline=deadline,
            source=f"mqtt:{_sender(msg, req)}",
            key=key,
        )
        problem = self.host.validate_action(action)
        if problem is not None:
            code: cp.ErrorCode = "rejected" if self.host.has_actuator(req.actuator) else "not_found"
            return cp.error_reply(req.id, code, problem)
        if not self.accepting():  # stopping began during the checks: nothing starts
            return cp.error_reply(req.id, "unavailable", "agentd is stopping")
        fut: asyncio.Future[cp.Reply] = asyncio.get_running_loop().create_future()
        self._running[key] = fut
        try:
            await self._claim(key)
            ack()  # the claim is committed: a redelivery now finds it
            result = await self.host.act(action)
            try:  # the outcome is on disk before the reply says it
                await self.store.flush()
            except StoreError as exc:
                log.warning("commands: the result of %s is not durable yet: %s", req.id, exc)
            reply = result_reply(req.id, result)
            self._remember(key, reply)
            fut.set_result(reply)
            return reply
        except _Refused as exc:
            fut.set_result(exc.reply)
            raise
        finally:
            if not fut.done():
                fut.cancel()
            self._running.pop(key, None)

    async def _config_cmd(self, msg: Inbound, req: cp.ConfigRequest, ack: Ack) -> cp.Reply:
        key = f"mqtt:{req.id}"
        dup = await self._duplicate(req.id, key)
        if dup is not None:
            return dup
        await self._claim(key)
        ack()

        def interim(reply: cp.Reply) -> None:
            asyncio.get_running_loop().create_task(self._reply(msg, reply))

        reply = await self.verbs.config(req, _sender(msg, req), interim)
        self._remember(key, reply)
        return reply

    # -- replies -----------------------------------------------------------------------------
    async def _finish(self, msg: Inbound, verb: str, sender: str, reply: cp.Reply) -> None:
        err = reply.error
        rec = FleetCommand(
            id=reply.id,
            verb=verb,
            sender=sender,
            topic=msg.topic,
            received=msg.received,
            finished=self._clock(),
            ok=reply.ok,
            code=err.code if err else None,
            message=err.message if err else None,
            duplicate=reply.duplicate,
        )
        self.counts["ok" if reply.ok else (err.code if err else "error")] += 1
        if not reply.ok and err is not None:
            now = time.monotonic()
            quiet = now - self._logged.get(err.code, -120.0) < 60.0
            if not quiet:
                self._logged[err.code] = now
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "command %s %r from %s refused: %s: %s",
                verb,
                reply.id,
                sender,
                err.code,
                err.message,
            )
        # journaled before the reply goes out: whoever got the reply finds the record
        self.store.journal_event("command", msgspec.to_builtins(rec))
        reply_error = await self._reply(msg, reply)
        if reply_error is not None:
            rec = msgspec.structs.replace(rec, reply_error=reply_error)
            self.store.journal_event("command.reply_failed", {"id": rec.id, "error": reply_error})
        self.recent.append(rec)

    async def _reply(self, msg: Inbound, reply: cp.Reply) -> str | None:
        topic = msg.response_topic
        if not topic or "+" in topic or "#" in topic or len(topic) > 1024:
            topic = f"{self.prefix}/{self.node}/reply/{reply.id or 'unknown'}"
        packed = msg.content_type == MSGPACK
        out = Message(
            topic=topic,
            payload=cp.encode_reply(reply, packed),
            content_type=MSGPACK if packed else "application/json",
            correlation=msg.correlation,
        )
        # a reply after a reload that restarted the uplink waits (bounded) for the new link
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            try:
                got = await asyncio.wait_for(self.send(out), REPLY_TIMEOUT)
            except TimeoutError:
                why = "no PUBACK"
            except TransportError as exc:
                why = str(exc) or "link lost"
            else:
                if got.ok:
                    return None
                why = f"reply refused by the broker ({got.reason or got.code})"
                log.warning("commands: %s: %s", reply.id, why)
                return why
            if time.monotonic() + 0.2 >= deadline:
                log.warning("commands: the reply to %s was not delivered: %s", reply.id, why)
                return why
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def uplink_state(self) -> UplinkStatus | None:
        return self.verbs.uplink_state()


def _sender(msg: Inbound, req: object) -> str:
    who = msg.prop("sender") or getattr(req, "sender", None) or "unknown"
    return "".join(c if c.isprintable() else "?" for c in who)[:128]


def _allow_name(verb: str, req: object) -> str:
    if isinstance(req, cp.ActRequest):
        return f"act:{req.actuator}.{req.action}"
    if isinstance(req, cp.ReplayRequest):
        return f"replay:{req.stream}"
    return verb


def _allowed(rule: str, name: str) -> bool:
    if ":" not in rule:
        return name.split(":", 1)[0] == rule
    return fnmatch.fnmatchcase(name, rule)


def _dup(reply: cp.Reply) -> cp.Reply:
    return msgspec.structs.replace(reply, duplicate=True, final=True)
