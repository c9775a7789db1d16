"""msgspec validation errors turned into the one-line messages a user reads:
``sensors.cpu.interval: expected a number >= 0.01, got -1``."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

__all__ = ["format_validation_error", "show"]

_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
    "null": "nothing",
}
_MSG = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def format_validation_error(prefix: str, exc: msgspec.ValidationError, raw: Any) -> str:
    """Turn msgspec's message into ``prefix.path: expected ..., got VALUE``."""
    m = _MSG.match(str(exc))
    assert m is not None  # the pattern matches any string
    msg, path = m.group("msg"), m.group("path") or ""
    dotted = prefix + re.sub(r"^\.", ".", path) if path else prefix
    unknown = re.match(r"Object contains unknown field `(.*)`", msg)
    if unknown:
        return f"{dotted}.{unknown.group(1)}: unknown key"
    missing = re.match(r"Object missing required field `(.*)`", msg)
    if missing:
        return f"{dotted}.{missing.group(1)}: required key is missing"
    if not msg.startswith("Expected"):
        return f"{dotted}: {msg}"  # a plugin's own check (__post_init__): already a sentence
    msg = re.sub(r"`([^`]+)`", lambda t: _type_words(t.group(1)), msg, count=1)
    msg = "expected" + re.sub(r", got `[^`]*`$", "", msg[len("Expected") :])
    value = _lookup(raw, path)
    if value is not _NOT_FOUND:
        msg = f"{msg}, got {show(value)}"
    return f"{dotted}: {msg}"


def _type_words(types: str) -> str:
    words = [_TYPE_WORDS.get(t.strip(), t.strip()) for t in types.split("|")]
    words = [w for w in words if w != "nothing"] or ["nothing"]
    if "a number" in words and "an integer" in words:
        words.remove("an integer")
    return " or ".join(dict.fromkeys(words))


_NOT_FOUND = object()


def _lookup(raw: Any, path: str) -> Any:
    node = raw
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        key, index = part
        try:
            node = node[int(index)] if index else node[key]
        except (KeyError, IndexError, TypeError):
            return _NOT_FOUND
    return node


def show(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)
