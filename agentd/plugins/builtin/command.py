"""`command` sensor: run a fixed argv from the config (no shell, scrubbed environment, timeout,
resource limits) and parse its stdout as one number, a JSON object of readings, or
``key value`` lines. The argv in the config *is* the allowlist: nothing of it comes from
outside."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from agentd.model import Value
from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin._proc import Limits, child_environ, run_argv
from agentd.secrets import SECRET, redact_text

__all__ = ["SPEC", "CommandConfig", "CommandSensor", "parse_output"]


class CommandConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: the program and its arguments; the program is an absolute path or found on a safe PATH
    argv: Annotated[list[str], Meta(min_length=1)]
    #: ``number``: the first number in the output; ``json``: an object (nested keys are joined
    #: with dots); ``lines``: ``name value`` (or ``name=value``) per line
    parse: Literal["number", "json", "lines"] = "number"
    #: the metric name for ``parse = "number"``
    metric: str = "value"
    #: seconds the command may run (besides the instance's call timeout)
    run_timeout: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    max_output: Annotated[int, Meta(ge=64, le=16 * 1024 * 1024)] = 65536
    #: a non-zero exit status is an error unless listed here
    ok_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    #: environment variables passed on from agentd's own environment; ``env`` adds fixed ones
    env_passthrough: list[str] = []
    env: Annotated[dict[str, str], SECRET] = {}  # values are secret (may hold a token)
    cwd: str | None = None
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if not self.argv[0].strip():
            raise ValueError("`argv[0]` is empty: name the program to run")


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_output(text: str, parse: str, metric: str) -> dict[str, Value]:
    """Readings from a command's stdout; ValueError with a one-line reason if unparseable."""
    if parse == "number":
        m = _NUMBER.search(text)
        if m is None:
            raise ValueError(f"no number in the output: {text[:80]!r}")
        return {metric: float(m.group())}
    if parse == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"output is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"JSON output is a {type(doc).__name__}, expected an object")
        out: dict[str, Value] = {}
        _flatten("", doc, out)
        return out
    readings: dict[str, Value] = {}
    for line in text.splitlines():
        parts = line.replace("=", " ", 1).split(None, 1)
        if len(parts) != 2:
            continue
        name, raw = parts[0], parts[1].strip()
        try:
            readings[name] = float(raw)
        except ValueError:
            readings[name] = raw
    return readings


def _flatten(prefix: str, node: object, out: dict[str, Value]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(node, bool | int | str) or (isinstance(node, float) and math.isfinite(node)):
        out[prefix] = node
    # lists and nulls carry no single reading: left out


class CommandSensor:
    def __init__(self, config: CommandConfig) -> None:
        self.config = config
        self.env = child_environ(config.env_passthrough, config.env)

    async def perceive(self) -> dict[str, Value]:
        c = self.config
        res = await run_argv(
            c.argv,
            timeout=c.run_timeout,
            env=self.env,
            cwd=c.cwd,
            max_output=c.max_output,
            limits=c.limits,
        )
        if res.returncode not in c.ok_codes:
            # a command may echo its environment: the error line never carries `env` values
            detail = redact_text(" ".join(res.stderr.split()), c)[:200]
            raise RuntimeError(f"{c.argv[0]} exited with status {res.returncode}: {detail}")
        if res.truncated and c.parse == "json":
            raise ValueError(f"output longer than max_output ({c.max_output} bytes)")
        return parse_output(res.stdout, c.parse, c.metric)


SPEC = PluginSpec(
    name="command",
    kind="sensor",
    factory=CommandSensor,
    config_type=CommandConfig,
    description="run a configured argv (no shell) and read a number, JSON or lines from it",
)
