"""`exec` actuator: run a command from an allowlist in the config. The action's name picks the
command; the argv is fixed except for ``{param}`` placeholders, each filled with one action
param inside exactly one argument (no shell, so no quoting games). The environment is scrubbed,
the run has a timeout, output is captured and truncated, resource limits apply, and whatever
the command leaves running is killed (see ``_proc``).

What a param can do to an argument is bounded whatever the config says: its value (not the
filled-in argument) must match ``param_pattern`` (by default one path segment: letters, digits
and ``_.,:@%+=~ -``, no ``/``); an argument that does not start with ``-`` never starts with one
after filling (a param cannot become an option); inside a path (an argument with a ``/`` of its
own) a value is never absolute and the filled-in path has no more ``..`` segments than the
config wrote, so a param cannot leave its directory; a value is at most ``MAX_PARAM`` characters.

Not idempotent: an action with an idempotency key runs at most once, even across a restart."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentd.model import Action
from agentd.plugins.base import ActuatorReply, PluginSpec
from agentd.plugins.builtin._proc import Limits, child_environ, run_argv
from agentd.secrets import SECRET, redact_text

__all__ = ["DEFAULT_PARAM_PATTERN", "MAX_PARAM", "SPEC", "ExecActuator", "ExecConfig", "ExecParams"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: one path segment's worth of characters (no ``/``, no NUL, no line break)
DEFAULT_PARAM_PATTERN = r"[\w.,:@%+=~ -]*"
#: characters of one param value in an argument
MAX_PARAM = 4096


class _Refused(ValueError):
    """A param that cannot go into its argument (the message is the one-line reason)."""


_ESCAPE = "would leave the path (no '..' segment or absolute value inside a path)"


class ExecConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: action name -> argv; ``{name}`` in an argument is replaced by the action's param ``name``
    commands: Annotated[dict[str, Annotated[list[str], Meta(min_length=1)]], Meta(min_length=1)]
    #: seconds a command may run; the process group is killed after that
    run_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    #: bytes of stdout and of stderr kept for the journal
    max_output: Annotated[int, Meta(ge=0, le=16 * 1024 * 1024)] = 4096
    ok_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    env_passthrough: list[str] = []
    #: fixed variables for the command; values are secret (hidden by agentd.secrets.redact)
    env: Annotated[dict[str, str], SECRET] = {}
    cwd: str | None = "/"
    limits: Limits = Limits()
    #: each param value used in an argument must match this whole (the value, not the filled-in
    #: argument); the default is one path segment. The option and path rules hold regardless.
    param_pattern: str = DEFAULT_PARAM_PATTERN

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
            try:
                out.append(self._fill(action, arg))
            except _Refused as exc:
                return str(exc)
        return out

    def _fill(self, action: Action, arg: str) -> str:
        """``arg`` with its placeholders filled; _Refused says why it cannot be."""
        where = f"{action.name}.params"
        in_path = "/" in _PLACEHOLDER.sub("", arg)
        values: dict[str, str] = {}
        for key in _PLACEHOLDER.findall(arg):
            value: Any = action.params.get(key)
            if value is None or isinstance(value, dict | list):
                raise _Refused(f"{where}.{key}: required (a string or number)")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if len(text) > MAX_PARAM:
                raise _Refused(f"{where}.{key}: longer than {MAX_PARAM} characters")
            if "\0" in text or not self.pattern.fullmatch(text):
                raise _Refused(f"{where}.{key}: {text[:40]!r} does not match param_pattern")
            if in_path and (text.startswith("/") or ".." in text.split("/")):
                raise _Refused(f"{where}.{key}: {text[:40]!r} {_ESCAPE}")
            values[key] = text
        if not values:
            return arg
        filled = _PLACEHOLDER.sub(lambda m: values[m.group(1)], arg)
        if filled.startswith("-") and not arg.startswith("-"):
            raise _Refused(f"{where}: {filled[:40]!r} is not allowed as an argument")
        # two values can make a '..' only together ("{a}{b}" with "." and ".")
        if in_path and filled.split("/").count("..") > arg.split("/").count(".."):
            raise _Refused(f"{where}: {filled[:40]!r} {_ESCAPE}")
        return filled

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
            # processes the command left running (daemonized), killed when it exited
            "strays_killed": res.strays,
        }
        if res.returncode not in c.ok_codes:
            # a command may echo its environment: the error line never carries `env` values
            detail = redact_text(" ".join((res.stderr or res.stdout).split()), c)[:200]
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
