"""Action params templated from readings, shared by the `rules` and `rate` policies.

A string param may hold ``{sensor.metric}`` or ``{sensor.metric:.1f}`` references (and the
extra names a policy passes, like ``{rate}`` or ``{tick}``). A param that is exactly one
reference keeps the reading's type (a number stays a number); a reference to a reading that is
missing this tick becomes ``null`` (alone) or an empty string (inside text).

Bounded, so one firing cannot write a 100 MB log line or journal row: a format spec's width is at
most ``MAX_WIDTH`` and its precision at most ``MAX_PRECISION`` (refused at config time), each
filled-in value is cut to ``MAX_VALUE`` characters and each rendered string (or a string reading
used alone) to ``MAX_TEXT``; a cut ends in "…" so it is never silent."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from agentd.model import Observation

__all__ = [
    "MAX_PRECISION",
    "MAX_TEXT",
    "MAX_VALUE",
    "MAX_WIDTH",
    "check_template",
    "config_ident",
    "firing_key",
    "render",
    "sha256_hex",
]

#: the widest field a format spec may ask for (``{x:>256}``)
MAX_WIDTH = 256
#: the most digits (or characters, for a string) a precision may ask for (``{x:.64f}``)
MAX_PRECISION = 64
#: characters of one filled-in value inside a text
MAX_VALUE = 1024
#: characters of one rendered string, and of a string reading used alone as a param
MAX_TEXT = 4096

_REF = re.compile(r"\{([A-Za-z0-9_][A-Za-z0-9_.\-]*)(?::([^{}]*))?\}")
#: Python's format-spec mini-language, to read the width and precision before formatting
_SPEC = re.compile(
    r"(?:(?P<fill>.)?[<>=^])?[-+ ]?z?#?0?(?P<width>\d+)?[_,]?(?:\.(?P<precision>\d+))?"
    r"[bcdeEfFgGnosxX%]?",
    re.S,
)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lookup(ref: str, obs: Observation, extra: Mapping[str, Any]) -> Any:
    if ref in extra:
        return extra[ref]
    return obs.get(ref)


def _one(text: str, obs: Observation, extra: Mapping[str, Any]) -> Any:
    whole = _REF.fullmatch(text)
    if whole and not whole.group(2):
        value = _lookup(whole.group(1), obs, extra)
        return _clip(value, MAX_TEXT) if isinstance(value, str) else value

    def sub(m: re.Match[str]) -> str:
        value = _lookup(m.group(1), obs, extra)
        if value is None:
            return ""
        if isinstance(value, str):
            value = _clip(value, MAX_VALUE)
        spec = m.group(2)
        if spec and _spec_problem(spec):
            spec = None  # checked at config time; an extra name must not bypass the bound
        try:
            out = format(value, spec) if spec else str(value)
        except (ValueError, TypeError):
            out = str(value)
        return _clip(out, MAX_VALUE)

    return _clip(_REF.sub(sub, text), MAX_TEXT)


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


def _spec_problem(spec: str) -> str | None:
    """Why a format spec is refused (too wide, too precise, or not a format at all)."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        return "is not a format spec"
    if m.group("width") and int(m.group("width")) > MAX_WIDTH:
        return f"width {int(m.group('width'))} is over the maximum {MAX_WIDTH}"
    if m.group("precision") and int(m.group("precision")) > MAX_PRECISION:
        return f"precision {int(m.group('precision'))} is over the maximum {MAX_PRECISION}"
    for sample in (1.5, "x"):
        try:
            format(sample, spec)
        except ValueError:
            continue
        return None
    return "can format neither a number nor a text"


def check_template(params: Mapping[str, Any], where: str = "params") -> None:
    """Raise ValueError naming the key for a format spec that can never work or asks for more
    than the bounds (checked at config time, so check-config says it in one line)."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, str):
            for m in _REF.finditer(node):
                problem = _spec_problem(m.group(2)) if m.group(2) else None
                if problem:
                    ref = _clip(m.group(0), 60)
                    raise ValueError(f"`{path}`: bad format {ref!r}: {problem}")
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for key, value in params.items():
        walk(value, f"{where}.{key}")


def config_ident(config: msgspec.Struct) -> str:
    """A short stable digest of a policy's config: the first part of its actions' idempotency
    keys, so two policies never share a key and a restart (ticks count from 1 again) does not
    reuse one."""
    return sha256_hex(msgspec.json.encode(config))[:10]


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, from CPython's own implementation (``_sha256``; ``_sha2``
    from 3.12) where there is one, as `random` does: hashlib's is OpenSSL's, and importing it
    initializes libcrypto's digests, 0.6 MiB of every daemon's memory (issue #18). The same
    digest either way (tests/plugins/test_import_light.py)."""
    for name in ("_sha256", "_sha2"):
        try:
            builtin = importlib.import_module(name)
        except ImportError:
            continue
        return str(builtin.sha256(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()


def firing_key(ident: str, name: str, obs: Observation) -> str:
    """The idempotency key of one firing: the policy (``config_ident``), the action, the tick
    and its wall second (ticks count from 1 again after a restart)."""
    return f"{ident}:{name}:{obs.tick}:{int(obs.wall)}"
