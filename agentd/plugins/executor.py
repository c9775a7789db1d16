"""`PluginExecutor`: the thread pool behind ``asyncio.to_thread`` in the daemon (it is the
loop's default executor), built for devices that hang.

- Each call is tagged with the plugin it runs for (`running_for` sets a context variable the
  loop and the `ActionRunner` set around a plugin call; ``to_thread`` copies the context), so
  "is a call of this plugin still running in a thread?" has an answer (`busy`) even after the
  asyncio task that waited for it was cancelled: the loop never starts a second one.
- The pool is bounded (``max_workers`` live threads; more calls wait in a FIFO queue). A call
  that outlived its timeout is `abandon`-ed: its thread no longer counts against the bound, so
  one stuck device cannot starve the other plugins; a call that has not started yet when its
  waiter gives up is cancelled and never runs. Abandoned threads are bounded too
  (`MAX_ABANDONED`), and since a plugin is not called again while one of its calls runs, there
  is at most one stuck call per plugin.
- The threads are daemon threads and `shutdown` never waits for a stuck one: a thread blocked
  in the kernel (a FIFO, a hung 1-wire bus) cannot keep the process from exiting. `stuck` names
  them for the shutdown log.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar, final

__all__ = [
    "MAX_ABANDONED",
    "MAX_WORKERS",
    "PluginExecutor",
    "StuckCall",
    "current_plugin",
    "running_for",
]

#: live worker threads of the daemon's pool (asyncio's default on 2 cores is 6)
MAX_WORKERS: Final = 8
#: abandoned (stuck) threads kept at most; past it, new calls wait for a live worker
MAX_ABANDONED: Final = 64
#: an idle worker exits after this long
IDLE_EXIT: Final = 30.0

P = ParamSpec("P")
T = TypeVar("T")

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentd_plugin", default=None)


def current_plugin() -> str | None:
    """The plugin ("sensor:NAME", "actuator:NAME") the running code calls for, if any."""
    return _CURRENT.get()


@final
class running_for:  # named like the function it replaced (contextlib style)
    """``with running_for(owner):`` tags the thread calls made inside the block (in this task)
    with ``owner``. A class, not a ``@contextmanager`` generator: the loop enters one per
    sensor per tick (issue #18)."""

    __slots__ = ("_owner", "_token")

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> None:
        self._token = _CURRENT.set(self._owner)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None


class StuckCall:
    """A call that is still running in a thread after its waiter gave up."""

    __slots__ = ("owner", "since", "thread")

    def __init__(self, owner: str | None, thread: str, since: float) -> None:
        self.owner = owner
        self.thread = thread
        self.since = since

    def describe(self, now: float) -> str:
        return f"{self.owner or 'unknown'} (thread {self.thread}, {now - self.since:.1f}s)"


class _Work:
    __slots__ = ("args", "fn", "future", "kwargs", "owner", "started")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        owner: str | None,
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.owner = owner
        self.started = 0.0


class PluginExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor by type only (asyncio's ``set_default_executor`` insists on one):
    its own workers, queue and shutdown; the base class's ``__init__`` is not run."""

    def __init__(self, max_workers: int = MAX_WORKERS, name: str = "agentd-worker") -> None:
        # not super().__init__(): its threads are non-daemon and joined at interpreter exit
        self.max_workers = max(1, max_workers)
        self.name = name
        self._cv = threading.Condition()
        self._queue: deque[_Work] = deque()
        #: live workers (not abandoned) and how many of them wait for work
        self._live: set[threading.Thread] = set()
        self._idle = 0
        self._running: dict[threading.Thread, _Work] = {}
        self._abandoned: set[threading.Thread] = set()
        self._count = 0
        self._shutdown = False

    # -- Executor ----------------------------------------------------------------------------
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        work = _Work(future, fn, args, kwargs, _CURRENT.get())
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.append(work)
            if self._idle > len(self._queue) - 1:
                self._cv.notify()
            elif len(self._live) < self.max_workers:
                self._spawn()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; queued ones are cancelled. With ``wait``, live workers are
        joined for at most a second each; stuck ones are never waited for."""
        with self._cv:
            self._shutdown = True
            queued, self._queue = list(self._queue), deque()
            live = [t for t in self._live if t not in self._running]
            self._cv.notify_all()
        for work in queued:
            work.future.cancel()
        if wait:
            for thread in live:
                thread.join(1.0)

    # -- what the loop asks ------------------------------------------------------------------
    def busy(self, owner: str) -> bool:
        """Whether a call for ``owner`` is running in a thread (or waits for one)."""
        if not self._running and not self._queue:
            # asked for every sensor every tick, almost always of an idle pool, so without
            # the lock (issue #18). Both empty can be stale only while a worker moves a call
            # from the queue to running under the lock: a call that is just starting, whose
            # sensor's task is still pending, which the loop checks first.
            return False
        with self._cv:
            return any(w.owner == owner for w in self._running.values()) or any(
                w.owner == owner for w in self._queue
            )

    def stuck_for(self, owner: str) -> bool:
        """Whether an abandoned call of ``owner`` is still running."""
        with self._cv:
            return any(w.owner == owner for t, w in self._running.items() if t in self._abandoned)

    def abandon(self, owner: str) -> int:
        """Give up on ``owner``'s running calls: their threads stop counting against the bound
        (they exit when the call returns, if it ever does); its queued calls are cancelled.
        Returns how many threads were abandoned."""
        n = 0
        with self._cv:
            for thread, work in self._running.items():
                if work.owner == owner and thread not in self._abandoned:
                    if len(self._abandoned) >= MAX_ABANDONED:
                        break
                    self._abandoned.add(thread)
                    self._live.discard(thread)
                    n += 1
            dropped = [w for w in self._queue if w.owner == owner]
            self._queue = deque(w for w in self._queue if w.owner != owner)
            # the calls that waited behind the stuck ones get the freed places
            while len(self._queue) > self._idle and len(self._live) < self.max_workers:
                self._spawn()
        for work in dropped:
            work.future.cancel()
        return n

    def stuck(self) -> list[StuckCall]:
        """Calls still running in abandoned threads."""
        with self._cv:
            return [
                StuckCall(w.owner, t.name, w.started)
                for t, w in self._running.items()
                if t in self._abandoned
            ]

    def running(self) -> list[StuckCall]:
        """Every call running in a thread now."""
        with self._cv:
            return [StuckCall(w.owner, t.name, w.started) for t, w in self._running.items()]

    # -- workers -----------------------------------------------------------------------------
    def _spawn(self) -> None:
        self._count += 1
        thread = threading.Thread(target=self._work, name=f"{self.name}-{self._count}", daemon=True)
        self._live.add(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cv:
                if me in self._abandoned:
                    self._abandoned.discard(me)
                    return
                while not self._queue and not self._shutdown:
                    self._idle += 1
                    woke = self._cv.wait(IDLE_EXIT)
                    self._idle -= 1
                    if not woke and not self._queue:
                        self._live.discard(me)
                        return
                if not self._queue:  # shut down
                    self._live.discard(me)
                    return
                work = self._queue.popleft()
                if not work.future.set_running_or_notify_cancel():
                    continue  # its waiter gave up before it started: it never runs
                work.started = time.monotonic()
                self._running[me] = work
            try:
                result = work.fn(*work.args, **work.kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)
            finally:
                with self._cv:
                    self._running.pop(me, None)
            del work
