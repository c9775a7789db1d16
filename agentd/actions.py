"""The act path, shared by the loop's act stage and manual tool calls (`agentctl act`):
validate an Action against its actuator's params Struct, honour its deadline, run it with a
timeout and the actuator's retry policy (exponential backoff with jitter), and report an
ActionResult. Never raises for a bad action: it becomes a `rejected` result."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, final

import msgspec

from agentd.config import ActuatorCommon
from agentd.model import Action, ActionResult, ActionStatus
from agentd.plugins.base import ActuatorReply
from agentd.plugins.executor import PluginExecutor, running_for
from agentd.plugins.handle import ActuatorRunner
from agentd.validation import format_validation_error

__all__ = ["ActionRunner", "KeyLedger", "ResultSink", "RunHook"]

log = logging.getLogger("agentd.actions")

#: idempotency keys remembered in memory for non-idempotent actuators
_SEEN_KEYS = 10_000


class KeyLedger(Protocol):
    """Idempotency keys that hold across a restart (the store's action journal). Either method
    may be plain or async."""

    def key_seen(self, actuator: str, key: str) -> bool | Awaitable[bool]:
        """Whether a key was already claimed."""
        ...

    def claim_key(self, actuator: str, key: str) -> Awaitable[None] | None:
        """Record the claim durably, before the first attempt."""
        ...


#: gets results of actions run outside a tick (manual tool calls)
ResultSink = Callable[[ActionResult], None]
#: ``hook(action, tick, run)`` must await ``run(action, tick)`` and return its result
RunHook = Callable[
    [Action, "int | None", Callable[[Action, "int | None"], Awaitable[ActionResult]]],
    Awaitable[ActionResult],
]


@final
class ActionRunner:
    __slots__ = (
        "_rejected",
        "_seen",
        "actuators",
        "default_timeout",
        "executor",
        "hook",
        "in_flight",
        "ledger",
        "limit",
        "manual_sinks",
    )

    def __init__(
        self,
        actuators: Mapping[str, ActuatorRunner],
        default_timeout: float,
        concurrency: int = 8,
        *,
        ledger: KeyLedger | None = None,
        hook: RunHook | None = None,
        manual_sinks: Sequence[ResultSink] = (),
        executor: PluginExecutor | None = None,
    ) -> None:
        self.actuators = actuators
        #: the daemon's thread pool: whether an actuator's call still runs in a thread
        self.executor = executor
        self.default_timeout = default_timeout
        #: at most this many actuator calls at once; FIFO, so priority order is kept
        self.limit = asyncio.Semaphore(concurrency)
        self.in_flight: set[asyncio.Task[ActionResult]] = set()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._rejected: OrderedDict[str, None] = OrderedDict()
        #: keys seen before a restart, and claims recorded before a first attempt
        self.ledger = ledger
        #: results of actions run outside a tick (manual tool calls: the store journals them);
        #: the loop's own results reach the journal through tick reports and late results
        self.manual_sinks = tuple(manual_sinks)
        #: wraps every run (agentd.telemetry: counts actions, traces them inside a request)
        self.hook = hook

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
            return f"actuator {action.actuator!r}: " + format_validation_error(
                f"{action.name}.params", exc, action.params
            )
        check = getattr(handle.obj, "validate", None)
        if callable(check):
            try:
                reason = check(action)
            except Exception as exc:  # noqa: BLE001 - a plugin's check must not break the path
                reason = f"validation failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                return f"actuator {action.actuator!r}: {reason}"
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
        """Run one action to its result (never raises for a bad or failing action). A result
        outside a tick (``tick is None``: a manual tool call) also goes to ``manual_sinks``."""
        if self.hook is not None:
            result = await self.hook(action, tick, self._run)
        else:
            result = await self._run(action, tick)
        if tick is None:
            for sink in self.manual_sinks:
                try:
                    sink(result)
                except Exception:  # a broken sink must not cost the caller its result
                    log.exception("manual-result sink %r failed", sink)
        return result

    async def _run(self, action: Action, tick: int | None) -> ActionResult:
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
            self._log_rejected(action, problem)
            return result("rejected", error=problem)
        handle = self.actuators[action.actuator]
        if action.deadline is not None and time.time() > action.deadline:
            return result("skipped", error="deadline passed before the action could run")
        # a degraded actuator is left alone by the loop until its backoff ends; an operator's
        # manual call (no tick) goes through: it is how one checks the device is back
        wait = handle.backing_off() if tick is not None else 0.0
        if wait > 0:
            return result(
                "skipped", error=f"actuator is degraded, backing off for {wait:.3g}s more"
            )
        if not handle.spec.idempotent and action.key is not None:
            ident = (action.actuator, action.key)
            if ident in self._seen or await self._key_seen(ident):
                return result("skipped", error=f"already done (idempotency key {action.key!r})")
            self._seen[ident] = None
            if len(self._seen) > _SEEN_KEYS:
                self._seen.popitem(last=False)
            if self.ledger is not None:
                claimed = self.ledger.claim_key(*ident)
                if claimed is not None:
                    await claimed
        common = handle.config
        assert isinstance(common, ActuatorCommon)
        executor = self.executor
        if executor is not None and executor.stuck_for(handle.owner):
            # an earlier call is stuck in the device: this one is not started (nor queued)
            handle.fail("an earlier call is still running in a thread (hung device)", stuck=True)
            return result("skipped", error=handle.last_error)
        timeout = common.timeout or self.default_timeout
        attempts = 0
        while True:
            attempts += 1
            deadline = asyncio.timeout(timeout)
            stuck = False
            try:
                with running_for(handle.owner):
                    async with deadline:
                        reply = await handle.obj.act(action)
            except TimeoutError as exc:
                # ours, or the actuator's own (a request timeout): both count as `timeout`
                kind = "timeout"
                error = f"timed out after {timeout:g}s" if deadline.expired() else _line(exc)
                # a call not yet started in its thread is cancelled and never runs; one that
                # has started cannot be taken back: say so, and never retry into a new thread
                stuck = executor is not None and executor.abandon(handle.owner) > 0
                if stuck:
                    error += "; the call is still running in a thread and may still take effect"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate any actuator failure
                kind, error = "error", _line(exc)
            else:
                handle.ok()
                output = reply.output if isinstance(reply, ActuatorReply) else reply
                return result("ok", attempts, output=output)
            if stuck or attempts > common.retries or kind not in common.retry_on:
                handle.fail(error, stuck=stuck)
                error = handle.last_error or error
                return result("timeout" if kind == "timeout" else "failed", attempts, error)
            delay = min(common.backoff_max, common.backoff * 2 ** (attempts - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _log_rejected(self, action: Action, problem: str) -> None:
        # once per distinct reason (a policy may send the same bad action every tick)
        level = logging.DEBUG if problem in self._rejected else logging.WARNING
        if level == logging.WARNING:
            self._rejected[problem] = None
            if len(self._rejected) > _SEEN_KEYS:
                self._rejected.popitem(last=False)
        src = f" from {action.source}" if action.source else ""
        log.log(level, "action %r%s rejected: %s", action.name, src, problem)

    async def _key_seen(self, ident: tuple[str, str]) -> bool:
        if self.ledger is None:
            return False
        out = self.ledger.key_seen(*ident)
        if inspect.isawaitable(out):
            out = await out
        return bool(out)

    def forget_keys(self) -> None:
        """Drop the in-memory idempotency keys (what a restart does)."""
        self._seen.clear()

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


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
