"""`exec` actuator: run a command from an allowlist in the config. The action's name picks the
command; the argv is fixed except for ``{param}`` placeholders, each replaced by one action
param as exactly one argument (no shell, so no quoting games). The environment is scrubbed,
the run has a timeout, output is captured and truncated, resource limits apply.

Not idempotent: an action with an idempotency key runs at most once, even across a restart."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.plugins.builtin._proc import Limits, child_environ, run_argv

__all__ = ["SPEC", "ExecActuator", "ExecConfig", "ExecParams"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ExecConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: action name -> argv; ``{name}`` in an argument is replaced by the action's param ``name``
    commands: Annotated[dict[str, Annotated[list[str], Meta(min_length=1)]], Meta(min_length=1)]
    #: seconds a command may run; the process group is killed after that
    run_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    #: bytes of stdout and of stderr kept for the journal
    max_output: Annotated[int, Meta(ge=0, le=16 * 1024 * 1024)] = 4096
    ok_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    env_passthrough: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = "/"
    limits: Limits = Limits()
    #: a param value used in an argument must match this (default: no leading '-', no NUL,
    #: no newline), so a param can never turn into an option
    param_pattern: str = r"[^\-\x00\n][^\x00\n]*|"

    def __post_init__(self) -> None:
        for name, argv in self.commands.items():
            if not argv[0].strip() or _PLACEHOLDER.search(argv[0]):
                raise ValueError(f"`commands.{name}`: argv[0] must be a fixed program path")
        try:
            re.compile(self.param_pattern)
        except re.error as exc:
            raise ValueError(f"`param_pattern` is not a valid regex: {exc}") from None


class ExecParams(msgspec.Struct, kw_only=True):
    """Values for the command's ``{placeholders}`` (strings, numbers or booleans)."""


class ExecActuator:
    def __init__(self, config: ExecConfig) -> None:
        self.config = config
        self.env = child_environ(config.env_passthrough, config.env)
        self.pattern = re.compile(config.param_pattern)

    def _argv(self, action: Action) -> list[str] | str:
        """The argv to run, or a one-line reason why not."""
        argv = self.config.commands.get(action.name)
        if argv is None:
            offered = ", ".join(sorted(self.config.commands))
            return f"no command {action.name!r} in the allowlist (allowed: {offered})"
        out = [argv[0]]
        for arg in argv[1:]:
            missing: list[str] = []

            def fill(m: re.Match[str], missing: list[str] = missing) -> str:
                value: Any = action.params.get(m.group(1))
                if value is None or isinstance(value, dict | list):
                    missing.append(m.group(1))
                    return ""
                return str(value).lower() if isinstance(value, bool) else str(value)

            filled = _PLACEHOLDER.sub(fill, arg)
            if missing:
                return f"{action.name}.params.{missing[0]}: required (a string or number)"
            if filled != arg and not self.pattern.fullmatch(filled):
                return f"{action.name}.params: {filled[:40]!r} is not allowed as an argument"
            out.append(filled)
        return out

    def validate(self, action: Action) -> str | None:
        argv = self._argv(action)
        return argv if isinstance(argv, str) else None

    async def act(self, action: Action) -> ActuatorReply:
        argv = self._argv(action)
        if isinstance(argv, str):
            raise ValueError(argv)  # noqa: TRY004 - a bad value, not a programming error
        c = self.config
        res = await run_argv(
            argv,
            timeout=c.run_timeout,
            env=self.env,
            cwd=c.cwd,
            max_output=c.max_output,
            limits=c.limits,
        )
        output = {
            "returncode": res.returncode,
            "stdout": res.stdout,
            "stderr": res.stderr,
            "truncated": res.truncated,
        }
        if res.returncode not in c.ok_codes:
            detail = " ".join((res.stderr or res.stdout).split())[:200]
            raise RuntimeError(f"{argv[0]} exited with status {res.returncode}: {detail}")
        return ActuatorReply(output=output)


SPEC = PluginSpec(
    name="exec",
    kind="actuator",
    factory=ExecActuator,
    config_type=ExecConfig,
    description="run an allowlisted command (no shell, scrubbed env, timeout, rlimits)",
    actions={"*": ExecParams},
    idempotent=False,
)
