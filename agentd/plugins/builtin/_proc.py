"""Running an allowlisted argv safely, shared by the `command` sensor and the `exec` actuator.

No shell; a scrubbed environment (built from a fixed PATH, the variables the config names and,
when running from a PyInstaller one-file binary, the *original* loader path, not the bundle's);
its own process group, killed whole on timeout; stdout/stderr captured and truncated; resource
limits set in the child with ``resource.setrlimit`` before exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["SAFE_PATH", "Limits", "ProcResult", "child_environ", "run_argv"]

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: variables PyInstaller's bootloader rewrites, saving the user's value as ``<NAME>_ORIG``
_LOADER_VARS = ("LD_LIBRARY_PATH",)


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Resource limits of the child (``setrlimit``); unset keys are inherited. Core dumps are
    always off."""

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
    process group is killed and TimeoutError raised. OSError (no such program) propagates."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_preexec(limits or Limits()),
        close_fds=True,
    )
    try:
        async with asyncio.timeout(timeout):
            if stdin is not None and proc.stdin is not None:
                proc.stdin.write(stdin)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await proc.stdin.drain()
                proc.stdin.close()
            (out, t1), (err, t2) = await asyncio.gather(
                _read_capped(proc.stdout, max_output), _read_capped(proc.stderr, max_output)
            )
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())
        raise TimeoutError(f"{argv[0]} still running after {timeout:g}s: killed") from None
    except BaseException:
        _kill_group(proc)
        # reap it so no zombie (and no ResourceWarning) is left behind
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())
        raise
    return ProcResult(
        returncode=code,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        truncated=t1 or t2,
    )


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
