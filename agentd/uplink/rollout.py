"""``config`` from the fleet: validate as check-config does, apply by hot reload, watch health
for a probation period, then commit to disk or roll back by itself.

The running file on disk is never touched until the probation passes: the candidate lives in
the state directory and the daemon reloads from it; a rollback is a reload of the file on disk
(the previous config), and a restart during probation therefore runs the previous config too
(recorded as ``abandoned``). The commit writes the candidate next to the config file, fsyncs
it, keeps the old file as ``<name>.previous`` and renames over (then fsyncs the directory), so a
power cut leaves either the old or the new file, never half of one. The running version and the
history of versions (``agentctl config history``) live in ``config-rollout.json`` in the state
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal, Protocol

import msgspec

from agentd.model import ConfigOutcome as Outcome
from agentd.model import ConfigVersion as HistoryEntry
from agentd.model import HealthReport
from agentd.uplink import cmdproto as cp

__all__ = ["ConfigTarget", "ConfigView", "HistoryEntry", "Rollout", "atomic_write"]

log = logging.getLogger("agentd.uplink.rollout")

HISTORY: Final = 50
STATE_FILE: Final = "config-rollout.json"
CANDIDATE: Final = "config-candidate.toml"


class ConfigTarget(Protocol):
    """The daemon's side (`agentd.daemon.Daemon` through a small adapter)."""

    def config_path(self) -> Path | None:
        """The file the daemon was started with (None: the embedded default)."""
        ...

    def validate(self, text: str) -> list[str]:
        """Exactly check-config's errors for this text (empty: valid)."""
        ...

    async def reload(self, path: str | None) -> list[str]:
        """The SIGHUP path, from ``path`` (None: the config file). Returns the errors."""
        ...

    def health(self) -> HealthReport: ...

    def source(self) -> str:
        """Where the running config came from (a SIGHUP during probation changes it)."""
        ...


class ConfigView(msgspec.Struct, frozen=True, kw_only=True):
    """The running config as the fleet sees it (status, birth message)."""

    version: str | None = None
    probation: bool = False
    #: wall time the probation ends (then: commit)
    until: float | None = None
    #: the version a rollback returns to
    previous: str | None = None


class _State(msgspec.Struct, kw_only=True):
    version: str | None = None
    sha256: str | None = None
    probation: HistoryEntry | None = None
    history: list[HistoryEntry] = []


class ConfigOutcome(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    state: Outcome
    until: float | None = None
    path: str | None = None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write, fsync, rename over, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Rollout:
    def __init__(
        self,
        target: ConfigTarget,
        state_dir: Path,
        *,
        default_probation: Callable[[], float],
        journal_event: Callable[[str, Mapping[str, object]], None],
        check_every: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.state_dir = state_dir
        self._default_probation = default_probation
        self._event = journal_event
        self.check_every = check_every
        self._clock = clock
        self._lock = asyncio.Lock()
        #: called when the view changes (the uplink republishes its status)
        self.on_change: Callable[[], None] | None = None
        self._state = self._load()
        self._recover()

    # -- state -------------------------------------------------------------------------------
    def _load(self) -> _State:
        try:
            return msgspec.json.decode((self.state_dir / STATE_FILE).read_bytes(), type=_State)
        except (OSError, msgspec.DecodeError):
            return _State()

    def _save(self) -> None:
        st = self._state
        st.history = st.history[-HISTORY:]
        atomic_write(self.state_dir / STATE_FILE, msgspec.json.encode(st))

    def _recover(self) -> None:
        """At start: a probation the process did not live through was not committed."""
        st = self._state
        if st.probation is not None:
            p = st.probation
            self._record(
                p.version, "abandoned", "agentd restarted during probation", p.id, p.sender
            )
            st.probation = None
            with contextlib.suppress(OSError):
                self._save()
        with contextlib.suppress(OSError):
            (self.state_dir / CANDIDATE).unlink()
        # a file edited by hand since is not the version the fleet sent
        path = self.target.config_path()
        if st.version is not None and (path is None or _sha(path) != st.sha256):
            st.version = None

    def view(self) -> ConfigView:
        st = self._state
        p = st.probation
        return ConfigView(
            version=p.version if p else st.version,
            probation=p is not None,
            until=_until(p) if p else None,
            previous=st.version if p else None,
        )

    def history(self) -> list[HistoryEntry]:
        return list(self._state.history)

    def _record(self, version: str, outcome: Outcome, reason: str, cid: str, sender: str) -> None:
        entry = HistoryEntry(
            version=version, outcome=outcome, at=self._clock(), id=cid, sender=sender, reason=reason
        )
        self._state.history.append(entry)
        self._event(f"config.{outcome}", msgspec.to_builtins(entry))
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # the status is a courtesy; the outcome is journaled
                log.exception("rollout: announcing the change failed")

    # -- the verb ----------------------------------------------------------------------------
    async def apply(
        self, req: cp.ConfigRequest, sender: str, interim: Callable[[cp.Reply], None]
    ) -> cp.Reply:
        if self._lock.locked():
            p = self._state.probation
            return cp.error_reply(
                req.id, "busy", f"version {p.version if p else '?'} is still on probation"
            )
        async with self._lock:
            return await self._apply(req, sender, interim)

    async def _apply(
        self, req: cp.ConfigRequest, sender: str, interim: Callable[[cp.Reply], None]
    ) -> cp.Reply:
        path = self.target.config_path()
        if path is None:
            return cp.error_reply(
                req.id, "unavailable", "agentd runs the embedded default: no file to commit to"
            )
        if not os.access(path.parent, os.W_OK):
            return cp.error_reply(req.id, "unavailable", f"{path.parent} is not writable")
        errors = self.target.validate(req.config)
        if errors:
            self._refused(req, sender, errors)
            return cp.error_reply(
                req.id, "invalid_config", f"{len(errors)} error(s): {errors[0]}", errors
            )
        data = req.config.encode()
        candidate = self.state_dir / CANDIDATE
        await asyncio.to_thread(atomic_write, candidate, data)
        errors = await self.target.reload(str(candidate))
        if errors:
            self._refused(req, sender, errors)
            with contextlib.suppress(OSError):
                candidate.unlink()
            return cp.error_reply(req.id, "invalid_config", f"reload refused: {errors[0]}", errors)
        probation = req.probation if req.probation is not None else self._default_probation()
        entry = HistoryEntry(
            version=req.version,
            outcome="probation",
            at=self._clock(),
            id=req.id,
            sender=sender,
            reason=f"{probation:g}s",
            sha256=hashlib.sha256(data).hexdigest(),
        )
        previous = self._state.version
        self._state.probation = entry
        self._state.history.append(entry)
        self._save()
        self._event("config.probation", msgspec.to_builtins(entry))
        self._changed()
        log.info("config %s from %s applied; on probation for %gs", req.version, sender, probation)
        until = entry.at + probation
        interim(
            cp.Reply(
                id=req.id,
                ok=True,
                final=False,
                result=ConfigOutcome(version=req.version, state="probation", until=until),
            )
        )
        # cancelled (agentd stopping): the next start records it as abandoned
        bad = await self._watch(probation, req.rollback_on, str(candidate))
        if bad == "reloaded":  # SIGHUP or agentctl reload: the file on disk runs, keep it
            self._state.probation = None
            why = "another reload replaced it during probation"
            self._record(req.version, "abandoned", why, req.id, sender)
            self._save()
            return cp.error_reply(req.id, "rolled_back", f"{why}; the config on disk runs")
        if bad is not None:
            return await self._roll_back(req, sender, bad, previous)
        return await self._commit(req, sender, path, data)

    async def _watch(
        self, probation: float, rollback_on: str, candidate: str
    ) -> HealthReport | Literal["reloaded"] | None:
        end = time.monotonic() + probation
        bad = ("failing",) if rollback_on == "failing" else ("failing", "degraded")
        while True:
            if self.target.source() != candidate:
                return "reloaded"
            health = self.target.health()
            if health.status in bad:
                return health
            left = end - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(self.check_every, left))

    async def _roll_back(
        self, req: cp.ConfigRequest, sender: str, health: HealthReport, previous: str | None
    ) -> cp.Reply:
        why = f"health {health.status} during probation: " + (
            "; ".join(health.reasons) or "no reason given"
        )
        errors = await self.target.reload(None)
        if errors:  # the file on disk loaded at start: only a change on disk can do this
            log.critical("config %s: rolling back failed: %s", req.version, errors[0])
            why += f"; rolling back failed: {errors[0]}"
        self._state.probation = None
        self._record(req.version, "rolled_back", why, req.id, sender)
        self._save()
        with contextlib.suppress(OSError):
            (self.state_dir / CANDIDATE).unlink()
        log.error("config %s rolled back: %s", req.version, why)
        back = previous or "the config on disk"
        return cp.error_reply(req.id, "rolled_back", f"{why}; {back} runs again")

    async def _commit(
        self, req: cp.ConfigRequest, sender: str, path: Path, data: bytes
    ) -> cp.Reply:
        try:
            await asyncio.to_thread(_commit_files, path, data)
        except OSError as exc:
            why = f"committing to {path} failed: {exc.strerror or exc}"
            await self.target.reload(None)
            self._state.probation = None
            self._record(req.version, "rolled_back", why, req.id, sender)
            self._save()
            return cp.error_reply(req.id, "unavailable", why)
        # the daemon now runs from the committed file again (its source, a later SIGHUP)
        errors = await self.target.reload(None)
        if errors:
            log.error("config %s: reloading the committed file failed: %s", req.version, errors[0])
        st = self._state
        st.probation = None
        st.version, st.sha256 = req.version, hashlib.sha256(data).hexdigest()
        self._record(req.version, "committed", "", req.id, sender)
        self._save()
        with contextlib.suppress(OSError):
            (self.state_dir / CANDIDATE).unlink()
        log.info("config %s committed to %s", req.version, path)
        return cp.Reply(
            id=req.id,
            ok=True,
            result=ConfigOutcome(version=req.version, state="committed", path=str(path)),
        )

    def _refused(self, req: cp.ConfigRequest, sender: str, errors: list[str]) -> None:
        self._record(req.version, "refused", "; ".join(errors)[:1000], req.id, sender)
        with contextlib.suppress(OSError):
            self._save()


def _commit_files(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o777
    with contextlib.suppress(FileNotFoundError):
        atomic_write(path.with_name(path.name + ".previous"), path.read_bytes(), mode)
    atomic_write(path, data, mode)


def _until(entry: HistoryEntry) -> float | None:
    try:
        return entry.at + float(entry.reason.rstrip("s"))
    except ValueError:
        return None


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
