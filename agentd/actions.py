"""The act path, shared by the loop's act stage and manual tool calls (`agentctl act`):
validate an Action against its actuator's params Struct, honour its deadline, run it with a
timeout and the actuator's retry policy (exponential backoff with jitter), and report an
ActionResult. Never raises for a bad action: it becomes a `rejected` result."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import final

import msgspec

from agentd.config import ActuatorCommon
from agentd.model import Action, ActionResult, ActionStatus
from agentd.plugins.base import ActuatorReply
from agentd.plugins.handle import PluginHandle

__all__ = ["ActionRunner"]

log = logging.getLogger("agentd.actions")

#: idempotency keys remembered in memory for non-idempotent actuators
_SEEN_KEYS = 10_000


@final
class ActionRunner:
    __slots__ = ("_seen", "actuators", "default_timeout", "in_flight", "key_seen", "limit")

    def __init__(
        self,
        actuators: Mapping[str, PluginHandle],
        default_timeout: float,
        concurrency: int = 8,
        key_seen: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.actuators = actuators
        self.default_timeout = default_timeout
        #: at most this many actuator calls at once; FIFO, so priority order is kept
        self.limit = asyncio.Semaphore(concurrency)
        self.in_flight: set[asyncio.Task[ActionResult]] = set()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: an extra check (the store's action journal) for keys seen before a restart
        self.key_seen = key_seen

    def validate(self, action: Action) -> str | None:
        """None if the action may run, else a one-line reason."""
        handle = self.actuators.get(action.actuator)
        if handle is None:
            known = ", ".join(sorted(self.actuators)) or "none"
            return f"no actuator named {action.actuator!r} (configured: {known})"
        actions = handle.spec.actions
        params_type = actions.get(action.name) or actions.get("*")
        if params_type is None:
            offered = ", ".join(sorted(actions))
            return f"actuator {action.actuator!r} has no action {action.name!r} (offers: {offered})"
        try:
            msgspec.convert(action.params, params_type, str_keys=True)
        except msgspec.ValidationError as exc:
            from agentd.config import format_validation_error

            return format_validation_error("params", exc, action.params)
        return None

    def submit(self, action: Action, tick: int | None = None) -> asyncio.Task[ActionResult]:
        """Run an action in the background, within the concurrency limit."""
        task = asyncio.get_running_loop().create_task(self._limited(action, tick))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return task

    async def _limited(self, action: Action, tick: int | None) -> ActionResult:
        async with self.limit:
            return await self.run(action, tick)

    async def run(self, action: Action, tick: int | None = None) -> ActionResult:
        started = time.monotonic()

        def result(
            status: ActionStatus, attempts: int = 0, error: str | None = None, output: object = None
        ) -> ActionResult:
            return ActionResult(
                action=action,
                status=status,
                attempts=attempts,
                duration=time.monotonic() - started,
                error=error,
                output=output,
                tick=tick,
                finished_at=time.time(),
            )

        problem = self.validate(action)
        if problem is not None:
            return result("rejected", error=problem)
        handle = self.actuators[action.actuator]
        if action.deadline is not None and time.time() > action.deadline:
            return result("skipped", error="deadline passed before the action could run")
        if not handle.spec.idempotent and action.key is not None:
            ident = (action.actuator, action.key)
            if ident in self._seen or (self.key_seen and self.key_seen(*ident)):
                return result("skipped", error=f"already done (idempotency key {action.key!r})")
            self._seen[ident] = None
            if len(self._seen) > _SEEN_KEYS:
                self._seen.popitem(last=False)
        common = handle.config
        assert isinstance(common, ActuatorCommon)
        timeout = common.timeout or self.default_timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                async with asyncio.timeout(timeout):
                    reply = await handle.obj.act(action)
            except TimeoutError:
                kind, error = "timeout", f"timed out after {timeout:g}s"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate any actuator failure
                kind, error = "error", f"{type(exc).__name__}: {exc}"
            else:
                handle.ok()
                output = reply.output if isinstance(reply, ActuatorReply) else reply
                return result("ok", attempts, output=output)
            if attempts > common.retries or kind not in common.retry_on:
                handle.fail(error)
                return result("timeout" if kind == "timeout" else "failed", attempts, error)
            delay = min(common.backoff_max, common.backoff * 2 ** (attempts - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def drain(self, timeout: float) -> int:
        """Wait for in-flight actions; cancel what is left after ``timeout``. Returns how many
        were cancelled."""
        if not self.in_flight:
            return 0
        _, pending = await asyncio.wait(set(self.in_flight), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)
