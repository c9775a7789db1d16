"""The action settings shared by the policies that fire once and clear (`rules`, `rate`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

__all__ = ["FiringConfig"]


class FiringConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to send when a policy fires and when it clears, and how often it may fire."""

    hysteresis: Annotated[float, Meta(ge=0)] = 0.0
    #: seconds between two firings
    cooldown: Annotated[float, Meta(ge=0)] = 0.0
    actuator: str = "log"
    action: str = "alert"
    #: templated from readings: ``"{sensor.metric}"``, ``"{sensor.metric:.1f} C"``, ``{tick}``
    params: dict[str, Any] = {}
    clear_action: str | None = None
    clear_params: dict[str, Any] = {}
    priority: int = 0
