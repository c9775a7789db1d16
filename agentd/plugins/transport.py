"""`UplinkRunner`: the handle of an ``uplink`` plugin (a transport, built-in ``mqtt``).

The supervisor builds, starts, rebuilds on reload and stops a transport like any plugin (so
``startup_error``, blocking, entry points and ``agentctl plugins`` work the same for it), but
nothing in the loop calls it: the daemon's `agentd.uplinking.Uplinks` gives ``obj`` to an
`agentd.uplink.UplinkEngine`, which alone connects, sends and closes it and owns the cursors and
accounting. Its state follows the engine's health: ``failing`` while the engine is degraded
(refused by the broker, or a backlog older than ``backlog_max_age``), ``ok`` otherwise.
"""

from __future__ import annotations

from typing import ClassVar

from agentd.config import UplinkCommon
from agentd.plugins.base import PluginKind
from agentd.plugins.handle import PluginHandle

__all__ = ["UplinkRunner"]


class UplinkRunner(PluginHandle):
    """An uplink transport; never backs off itself (the engine's reconnect backoff does)."""

    __slots__ = ()
    kind: ClassVar[PluginKind] = "uplink"
    degrades: ClassVar[bool] = False

    @property
    def settings(self) -> UplinkCommon:
        common = self.instance.common
        assert isinstance(common, UplinkCommon)
        return common
