"""Action params templated from readings, shared by the `rules` and `rate` policies.

A string param may hold ``{sensor.metric}`` or ``{sensor.metric:.1f}`` references (and the
extra names a policy passes, like ``{rate}`` or ``{tick}``). A param that is exactly one
reference keeps the reading's type (a number stays a number); a reference to a reading that is
missing this tick becomes ``null`` (alone) or an empty string (inside text)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from agentd.model import Observation

__all__ = ["check_template", "config_ident", "firing_key", "render"]

_REF = re.compile(r"\{([A-Za-z0-9_][A-Za-z0-9_.\-]*)(?::([^{}]*))?\}")


def _lookup(ref: str, obs: Observation, extra: Mapping[str, Any]) -> Any:
    if ref in extra:
        return extra[ref]
    return obs.get(ref)


def _one(text: str, obs: Observation, extra: Mapping[str, Any]) -> Any:
    whole = _REF.fullmatch(text)
    if whole and not whole.group(2):
        return _lookup(whole.group(1), obs, extra)

    def sub(m: re.Match[str]) -> str:
        value = _lookup(m.group(1), obs, extra)
        if value is None:
            return ""
        spec = m.group(2)
        try:
            return format(value, spec) if spec else str(value)
        except (ValueError, TypeError):
            return str(value)

    return _REF.sub(sub, text)


def render(params: Mapping[str, Any], obs: Observation, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Params with every template reference filled in (recursively in lists and tables)."""

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _one(node, obs, extra) if "{" in node else node
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return {k: walk(v) for k, v in params.items()}


def check_template(params: Mapping[str, Any]) -> None:
    """Raise ValueError for a format spec that can never work (checked at config time)."""
    for key, value in params.items():
        if isinstance(value, str):
            for m in _REF.finditer(value):
                if m.group(2):
                    try:
                        format(1.5, m.group(2))
                    except ValueError:
                        try:
                            format("x", m.group(2))
                        except ValueError:
                            raise ValueError(
                                f"`params.{key}`: bad format {m.group(2)!r} in {m.group(0)!r}"
                            ) from None


def config_ident(config: msgspec.Struct) -> str:
    """A short stable digest of a policy's config: the first part of its actions' idempotency
    keys, so two policies never share a key and a restart (ticks count from 1 again) does not
    reuse one."""
    return hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:10]


def firing_key(ident: str, name: str, obs: Observation) -> str:
    """The idempotency key of one firing: the policy (``config_ident``), the action, the tick
    and its wall second (ticks count from 1 again after a restart)."""
    return f"{ident}:{name}:{obs.tick}:{int(obs.wall)}"
