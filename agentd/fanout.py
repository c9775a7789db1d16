"""`TickFanout`: one `TickObserver` the loop is built with, that others subscribe to later.

The loop takes its observers at construction; whatever comes and goes while it runs (the
control plane's ``agentctl watch`` streams) subscribes here instead of to the loop. Each
subscriber is itself a `TickObserver`; one that raises is logged and stays subscribed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import final

from agentd.loop import TickObserver
from agentd.model import ActionResult, TickReport

__all__ = ["TickFanout"]

log = logging.getLogger("agentd")


@final
class TickFanout:
    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: tuple[TickObserver, ...] = ()

    def subscribe(self, observer: TickObserver) -> Callable[[], None]:
        """Start passing ticks and late results to ``observer``; returns its unsubscribe."""
        # replaced, not mutated: a subscriber may unsubscribe from inside its own callback
        self._subscribers = (*self._subscribers, observer)

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not observer)

        return unsubscribe

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def on_tick(self, report: TickReport) -> None:
        for observer in self._subscribers:
            try:
                observer.on_tick(report)
            except Exception:
                log.exception("tick subscriber %r failed", observer)

    def on_late_result(self, result: ActionResult) -> None:
        for observer in self._subscribers:
            try:
                observer.on_late_result(result)
            except Exception:
                log.exception("late-result subscriber %r failed", observer)
