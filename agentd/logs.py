"""Logging to stderr in a journald-friendly form: with ``JOURNAL_STREAM`` set (stderr is the
journal) lines carry a ``<N>`` priority prefix and no timestamp, since journald adds its own."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["TraceIdFilter", "setup_logging"]

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id=<32 hex>`` (as ``%(trace)s``) to a record logged while a span or a
    tick's trace context is current (agentd.telemetry), else an empty string. Until something
    has imported the OpenTelemetry API no span can be current, so it is not imported here
    (agentd.telemetry.spans imports it only when spans are made; issue #18)."""

    def __init__(self) -> None:
        super().__init__()
        self._current: Callable[[], Any] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._current is None:
            # (getattr: another thread may be importing it right now)
            current = getattr(sys.modules.get("opentelemetry.trace"), "get_current_span", None)
            if current is None:
                record.trace = ""
                return True
            self._current = current
        ctx = self._current().get_span_context()
        record.trace = f" trace_id={ctx.trace_id:032x}" if ctx.is_valid else ""
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceIdFilter())
    if _stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s%(trace)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(trace)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
