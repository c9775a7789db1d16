"""Running an allowlisted argv safely, shared by the `command` sensor and the `exec` actuator.

No shell; a scrubbed environment (built from a fixed PATH, the variables the config names and,
when running from a PyInstaller one-file binary, the *original* loader path, not the bundle's);
its own process group, killed whole on timeout; stdout/stderr captured and truncated; resource
limits set in the child with ``resource.setrlimit`` before exec.

Nothing a run starts outlives it. agentd makes itself a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``), so what a command leaves behind (``setsid sleep 60 &``, a
double fork) is re-parented to agentd rather than to init; each run's environment carries an
``AGENTD_RUN`` token. When the program exits (or is killed on timeout) every process of its
group or session, every adopted orphan carrying the token, and all their descendants are killed
with SIGKILL and reaped, and counted in ``ProcResult.strays``. The output pipes are agentd's own
and are closed on every path, so no call leaks a file descriptor. A process that clears its
environment *and* leaves the session and the group before its parent exits can still escape.
How strays are found and reaped (and the zombies nobody can attribute) is ``_reaper``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from agentd.plugins.builtin._reaper import (
    RUN_MARKER,
    RUNS,
    become_subreaper,
    boot_ticks,
    reap_orphans,
    sweep,
)

__all__ = ["RUN_MARKER", "SAFE_PATH", "Limits", "ProcResult", "child_environ", "run_argv"]

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: variables PyInstaller's bootloader rewrites, saving the user's value as ``<NAME>_ORIG``
_LOADER_VARS = ("LD_LIBRARY_PATH",)
_runs = itertools.count(1)


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Resource limits of the child (``setrlimit``); unset keys are inherited. Core dumps are
    always off. ``processes`` (RLIMIT_NPROC) counts all processes of the user and does not bind
    root (or CAP_SYS_RESOURCE): run agentd as its own user, or use the unit's ``TasksMax=``."""

    cpu_seconds: Annotated[int, Meta(ge=1)] | None = None
    memory_mb: Annotated[int, Meta(ge=1)] | None = None
    open_files: Annotated[int, Meta(ge=3)] | None = 256
    file_size_mb: Annotated[int, Meta(ge=0)] | None = None
    processes: Annotated[int, Meta(ge=1)] | None = None


class ProcResult(msgspec.Struct, frozen=True, kw_only=True):
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False
    #: processes the run left behind, killed when its program ended
    strays: int = 0


def original_environ() -> dict[str, str]:
    """os.environ as the user set it: undo what a frozen binary's bootloader changed (our
    runtime hook may have done so already: then there is no ``_ORIG`` and nothing of the
    bundle left in the variable)."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        bundle = getattr(sys, "_MEIPASS", None)
        for var in _LOADER_VARS:
            orig = env.pop(f"{var}_ORIG", None)
            if orig is not None:
                env[var] = orig
            elif var in env:
                kept = [
                    p for p in env[var].split(os.pathsep) if not (bundle and p.startswith(bundle))
                ]
                if any(kept):
                    env[var] = os.pathsep.join(kept)
                else:
                    del env[var]
    return env


def child_environ(
    passthrough: Sequence[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A scrubbed environment: PATH, LANG, the ``passthrough`` variables taken from agentd's
    own (original) environment, then ``extra``."""
    source = original_environ()
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    for name in passthrough:
        if name in source:
            env[name] = source[name]
    env.update(extra or {})
    return env


def _preexec(limits: Limits) -> Callable[[], None]:
    mb = 1024 * 1024
    pairs = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_AS, limits.memory_mb * mb if limits.memory_mb else None),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (
            resource.RLIMIT_FSIZE,
            limits.file_size_mb * mb if limits.file_size_mb is not None else None,
        ),
        (resource.RLIMIT_NPROC, limits.processes),
    ]
    wanted = [(res, value) for res, value in pairs if value is not None]

    def apply() -> None:  # runs in the child between fork and exec: no locks, no logging
        for res, value in wanted:
            _, hard = resource.getrlimit(res)
            soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(res, (soft, hard if hard != resource.RLIM_INFINITY else soft))

    return apply


async def _read_capped(stream: asyncio.StreamReader | None, cap: int) -> tuple[bytes, bool]:
    """Read everything (so the child never blocks on a full pipe) but keep ``cap`` bytes."""
    if stream is None:
        return b"", False
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return bytes(kept), truncated


async def run_argv(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str],
    cwd: str | None = None,
    max_output: int = 65536,
    limits: Limits | None = None,
    stdin: bytes | None = None,
) -> ProcResult:
    """Run ``argv`` (no shell) and wait at most ``timeout`` seconds; on timeout the whole
    process group is killed and TimeoutError raised. OSError (no such program) propagates.
    Whatever the program leaves running is killed when it exits (``ProcResult.strays``)."""
    become_subreaper()
    # os.urandom is what secrets.token_hex reads; importing secrets would load hashlib and
    # OpenSSL's digests into every daemon (issue #18)
    token = f"{os.getpid()}.{next(_runs)}.{os.urandom(4).hex()}"
    since = boot_ticks()
    loop = asyncio.get_running_loop()
    pipes: list[asyncio.ReadTransport] = []
    ends: list[int] = []
    try:
        readers = []
        for _ in range(2):
            r, w = os.pipe2(os.O_CLOEXEC)
            ends.append(w)
            reader = asyncio.StreamReader()
            pipe, _ = await loop.connect_read_pipe(
                lambda reader=reader: asyncio.StreamReaderProtocol(reader),  # type: ignore[misc]
                os.fdopen(r, "rb", buffering=0),
            )
            pipes.append(pipe)
            readers.append(reader)
        RUNS.spawning += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=ends[0],
                stderr=ends[1],
                env={**env, RUN_MARKER: token},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_preexec(limits or Limits()),
                close_fds=True,
            )
            RUNS.leaders.add(proc.pid)
        finally:
            RUNS.spawning -= 1
    except BaseException:
        for pipe in pipes:
            pipe.close()
        raise
    finally:
        for fd in ends:  # the child has its copies; ours would keep the pipes from ending
            os.close(fd)
    output = asyncio.ensure_future(
        asyncio.gather(_read_capped(readers[0], max_output), _read_capped(readers[1], max_output))
    )
    try:
        try:
            async with asyncio.timeout(timeout):
                if stdin is not None and proc.stdin is not None:
                    proc.stdin.write(stdin)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        await proc.stdin.drain()
                    proc.stdin.close()
                code = await proc.wait()
        except BaseException:
            _kill_group(proc)
            # reap it so no zombie (and no ResourceWarning) is left behind
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(proc.wait())
            raise
        finally:
            RUNS.leaders.discard(proc.pid)
            # the program is gone: whatever still runs is a stray, and may hold the pipes
            swept = await asyncio.shield(
                asyncio.to_thread(sweep, proc.pid, token, since, frozenset(RUNS.leaders))
            )
            reap_orphans(swept.orphans)
            strays = swept.killed
    except TimeoutError:
        raise TimeoutError(f"{argv[0]} still running after {timeout:g}s: killed") from None
    finally:
        # every writer we know of is dead, so the readers reach EOF once the buffer is read;
        # closing our ends gives EOF (and a writer that escaped, SIGPIPE) in any case
        await _settle(output, pipes)
    if output.cancelled():
        raise RuntimeError(f"{argv[0]}: its output pipes did not close")
    (out, t1), (err, t2) = output.result()
    return ProcResult(
        returncode=code,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        truncated=t1 or t2,
        strays=strays,
    )


_Captured = tuple[tuple[bytes, bool], tuple[bytes, bool]]


async def _settle(output: asyncio.Future[_Captured], pipes: list[asyncio.ReadTransport]) -> None:
    for close in (False, True):
        if close:
            for pipe in pipes:
                pipe.close()
        if not output.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(output)
    if not output.done():  # cannot happen once the pipes are closed: never hang on it
        output.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await output


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
