"""`WatchFeed`: what ``watch`` streams. A tick observer (``on_tick``, ``on_late_result``) that
anything can call, plus the state changes the control plane makes; the control server
subscribes to it. It needs nothing, so the assembler can build it before the loop and hand it
to the loop as an observer, then to `ControlApi`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from agentd.control.protocol import EventKind
from agentd.model import ActionResult, TickReport

__all__ = ["Subscriber", "WatchFeed"]

log = logging.getLogger("agentd.control")

#: a watch subscriber: called synchronously from the loop's observers; must not block
Subscriber = Callable[[EventKind, msgspec.Struct], None]


class WatchFeed:
    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, kind: EventKind, data: msgspec.Struct) -> None:
        for fn in list(self._subscribers):
            try:
                fn(kind, data)
            except Exception:
                log.exception("watch subscriber %r failed", fn)

    def on_tick(self, report: TickReport) -> None:
        """A tick observer: each finished tick, then its action results."""
        if not self._subscribers:
            return
        self.publish("tick", report)
        for result in report.results:
            self.publish("action", result)

    def on_late_result(self, result: ActionResult) -> None:
        """An action that finished after its tick (a slow actuator)."""
        if self._subscribers:
            self.publish("action", result)
