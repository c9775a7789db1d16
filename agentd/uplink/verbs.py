"""The verbs behind the command channel: ``status``, ``health``, ``uplink``, ``replay`` and
(through `agentd.uplink.rollout.Rollout`) ``config``; ``act`` is the channel's own, since it
owns the once-only claim."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from agentd.errors import StoreError
from agentd.model import ActionResult, HealthReport, StatusReport, UplinkStatus
from agentd.store import Store
from agentd.uplink import cmdproto as cp
from agentd.uplink import envelope as env
from agentd.uplink.base import Delivery, Message, Stream, TransportError
from agentd.uplink.config import Format
from agentd.uplink.storeview import RowLike

if TYPE_CHECKING:
    from agentd.uplink.rollout import ConfigView, Rollout

__all__ = ["ReplayResult", "Replayer", "StatusResult", "Verbs", "result_reply"]

#: a replay batch (the uplink's default batch bounds)
REPLAY_ROWS: Final = 256
REPLAY_BYTES: Final = 128 * 1024
SEND_TIMEOUT: Final = 30.0


class Reader(Protocol):
    def status(self) -> StatusReport: ...

    def health(self) -> HealthReport: ...


class StatusResult(msgspec.Struct, frozen=True, kw_only=True):
    agent: StatusReport
    config: ConfigView | None = None
    uplink: UplinkStatus | None = None


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    stream: Stream
    first: int = msgspec.field(name="from")
    last: int = msgspec.field(name="to")
    rows: int
    batches: int
    #: id ranges in from..to the journal no longer holds (retention), as [first, last]
    missing: list[tuple[int, int]] = []


def result_reply(cid: str, result: ActionResult) -> cp.Reply:
    """An action's result as a reply: ``ok`` only if it ran and succeeded."""
    body = {
        "status": result.status,
        "attempts": result.attempts,
        "duration": round(result.duration, 6),
        "output": result.output,
        "finished_at": result.finished_at,
    }
    if result.status == "ok":
        return cp.Reply(id=cid, ok=True, result=body)
    code: cp.ErrorCode = result.status  # rejected, skipped, failed, timeout
    return cp.Reply(
        id=cid,
        ok=False,
        result=body,
        error=cp.ErrorInfo(code=code, message=result.error or result.status),
    )


class Replayer:
    """Re-sends a stream's rows ``from..to`` from the journal, as the uplink sent them (same
    envelope, same topic, the rows' original ids); rows retention removed are reported."""

    def __init__(
        self,
        store: Store,
        send: Callable[[Message], Awaitable[Delivery]],
        *,
        node: str,
        topics: dict[str, str],
        fmt: Format,
        max_rows: Callable[[], int],
    ) -> None:
        self.store = store
        self.send = send
        self.node = node
        self.topics = topics
        self.fmt = fmt
        self.max_rows = max_rows

    async def replay(self, req: cp.ReplayRequest) -> cp.Reply:
        stream, first, last = req.stream, req.first, req.last
        if last < first:
            return cp.error_reply(
                req.id, "malformed", f"replay: to ({last}) is below from ({first})"
            )
        if last - first + 1 > self.max_rows():
            return cp.error_reply(
                req.id, "too_large", f"replay: {last - first + 1} rows; at most {self.max_rows()}"
            )
        topic = self.topics.get(stream)
        if topic is None:
            return cp.error_reply(req.id, "not_found", f"this uplink does not carry {stream}")
        head = self.store.stream_head(stream)
        if first > head:
            return cp.error_reply(req.id, "not_found", f"{stream}: no row after {head} yet")
        last = min(last, head)
        after, rows_sent, batches = first - 1, 0, 0
        missing: list[tuple[int, int]] = []
        try:
            while after < last:
                rows = await self.store.stream_rows(
                    stream, after, min(REPLAY_ROWS, last - after), REPLAY_BYTES
                )
                rows = [r for r in rows if r.id <= last]
                if not rows:
                    missing.append((after + 1, last))
                    break
                run_start = 0
                if rows[0].id != after + 1:
                    missing.append((after + 1, rows[0].id - 1))
                for i in range(1, len(rows) + 1):
                    if i == len(rows) or rows[i].id != rows[i - 1].id + 1:
                        if i < len(rows):
                            missing.append((rows[i - 1].id + 1, rows[i].id - 1))
                        await self._send(stream, topic, rows[run_start:i])
                        batches += 1
                        rows_sent += i - run_start
                        run_start = i
                after = rows[-1].id
        except StoreError as exc:
            return cp.error_reply(req.id, "unavailable", f"replay: reading {stream}: {exc}")
        except (TransportError, TimeoutError) as exc:
            return cp.error_reply(
                req.id, "failed", f"replay: sending stopped after {rows_sent} rows: {exc}"
            )
        result = ReplayResult(
            stream=stream, first=first, last=last, rows=rows_sent, batches=batches, missing=missing
        )
        return cp.Reply(id=req.id, ok=True, result=result)

    async def _send(self, stream: Stream, topic: str, rows: Sequence[RowLike]) -> None:
        e = env.rows_envelope(
            self.node, self.store.epoch, self.store.boot_id, stream, rows, self.fmt
        )
        msg = Message(
            topic=topic, payload=env.encode(e, self.fmt), content_type=env.CONTENT_TYPES[self.fmt]
        )
        got = await asyncio.wait_for(self.send(msg), SEND_TIMEOUT)
        if not got.ok:
            raise TransportError(f"refused by the broker ({got.reason or got.code})")


class Verbs:
    def __init__(
        self,
        *,
        host: Reader,
        uplink: Callable[[], UplinkStatus | None],
        replayer: Replayer | None,
        rollout: Rollout | None,
    ) -> None:
        self.host = host
        #: the engine's ``state`` (set once the engine exists: it is built around the link)
        self.uplink_state: Callable[[], UplinkStatus | None] = uplink
        self.replayer = replayer
        self.rollout = rollout

    async def simple(self, verb: str, req: object) -> cp.Reply:
        assert isinstance(req, cp.Request | cp.ReplayRequest)
        if verb == "status":
            view = self.rollout.view() if self.rollout is not None else None
            result: object = StatusResult(
                agent=self.host.status(), config=view, uplink=self.uplink_state()
            )
        elif verb == "health":
            result = self.host.health()
        elif verb == "uplink":
            result = self.uplink_state()
        elif verb == "replay" and isinstance(req, cp.ReplayRequest):
            if self.replayer is None:
                return cp.error_reply(req.id, "unavailable", "replay needs the uplink's store")
            return await self.replayer.replay(req)
        else:
            return cp.error_reply(req.id, "unknown_verb", f"no verb {verb!r}")
        return cp.Reply(id=req.id, ok=True, result=result)

    async def config(
        self, req: cp.ConfigRequest, sender: str, interim: Callable[[cp.Reply], None]
    ) -> cp.Reply:
        if self.rollout is None:
            return cp.error_reply(req.id, "unavailable", "remote configuration is not set up")
        return await self.rollout.apply(req, sender, interim)
