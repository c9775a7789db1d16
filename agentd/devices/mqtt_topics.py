"""The pure half of the `mqtt` device plugins (no paho): topic filters and templates, metric
names made from topics, and payloads turned into readings. The config Structs check with it
(``check-config`` never imports paho), and the sensor maps every message with it.

Metric names. A message on a topic matched by a filter is named from the topic levels the
filter's wildcards matched (``metric_names = "wildcards"``, the default): ``zigbee2mqtt/+`` and
``zigbee2mqtt/kitchen`` give ``kitchen``; ``shellies/+/relay/+`` and ``shellies/sh1/relay/0``
give ``sh1.0``; ``home/#`` and ``home/floor1/hall`` give ``floor1.hall`` (every level under
``#``, joined by dots). A filter without wildcards (or a ``#`` that matched no level) gives the
topic's last level. ``"last"`` takes the last level only, ``"topic"`` the whole topic. Each
level is made metric-safe: characters other than letters, digits, ``_`` and ``-`` become ``_``
(an empty level is ``_``), and a level longer than `MAX_LEVEL` is cut and ends in a hash of the
whole, so two long names stay apart. The whole device part is bounded by `MAX_NAME` the same
way. The field part is the JSON path as configured (``state.power``) or found.

Payloads. A JSON object gives one reading per configured field (dotted paths into nested
objects); with no ``fields`` configured, every number, boolean and short string leaf (at most
`MAX_DEPTH` levels deep). Anything else is one reading ``<name>.value``: a number (a JSON number
or plain text), a boolean (JSON ``true``/``false``, or the strings ``ON``/``OFF``/``true``/
``false`` in any case, as Zigbee2MQTT, Tasmota and Shelly send them) or a short string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, Literal

import msgspec

from agentd.model import Value

__all__ = [
    "MAX_DEPTH",
    "MAX_LEVEL",
    "MAX_NAME",
    "MAX_STRING",
    "NameStyle",
    "Namer",
    "Unmapped",
    "filter_problem",
    "parse_payload",
    "placeholders",
    "safe_level",
    "template_problem",
    "topic_matches",
]

NameStyle = Literal["wildcards", "last", "topic"]

#: characters of one topic level (or JSON key) in a metric name
MAX_LEVEL: Final = 64
#: characters of the device part of a metric name (the levels joined)
MAX_NAME: Final = 160
#: characters of a string reading; a longer string is not a reading (counted unmapped)
MAX_STRING: Final = 256
#: levels of nested objects read when no ``fields`` are configured
MAX_DEPTH: Final = 4
#: bytes of a topic filter or template (MQTT allows 65535; nobody needs that many)
MAX_TOPIC: Final = 1024

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BOOLS: Final = {"on": True, "off": False, "true": True, "false": False}
_decode = msgspec.json.Decoder()


class Unmapped(ValueError):
    """A payload that gives no reading (the message is counted, the reason logged)."""

    def __init__(self, reason: str, kind: Literal["malformed", "unmapped"]) -> None:
        super().__init__(reason)
        self.kind = kind


# -- config checks ----------------------------------------------------------------------------
def filter_problem(topic: str) -> str | None:
    """Why ``topic`` is not a valid MQTT subscription filter, or None."""
    if not topic:
        return "an empty topic filter"
    if len(topic.encode()) > MAX_TOPIC:
        return f"longer than {MAX_TOPIC} bytes"
    if "\x00" in topic:
        return "a NUL character"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level, and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def placeholders(template: str) -> list[str]:
    """The ``{name}`` placeholders of a topic or payload template, in order."""
    return _PLACEHOLDER.findall(template)


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be a topic to publish to (placeholders aside), or None."""
    fixed = _PLACEHOLDER.sub("x", template)
    if not template:
        return "an empty topic"
    if len(template.encode()) > MAX_TOPIC:
        return f"longer than {MAX_TOPIC} bytes"
    if any(c in fixed for c in "+#\x00"):
        return "a publish topic has no wildcards ('+', '#') or NUL"
    if "{" in fixed or "}" in fixed:
        return "a stray '{' or '}' (placeholders are {name})"
    return None


# -- names ------------------------------------------------------------------------------------
def _digest(text: str) -> str:
    # CPython's own SHA-256, not hashlib's: this module is imported by every daemon start
    # (the plugin's config), and hashlib initializes OpenSSL's digests (issue #18)
    from agentd.plugins.builtin._template import sha256_hex

    return sha256_hex(text.encode())[:8]


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 9]}_{_digest(text)}"


def safe_level(level: str) -> str:
    """One topic level (or JSON key) as metric-name text."""
    return _bounded(_UNSAFE.sub("_", level) or "_", MAX_LEVEL)


def topic_matches(levels: Sequence[str], topic: Sequence[str]) -> list[str] | None:
    """The topic levels the filter's wildcards matched (empty: the filter has none), or None
    when the topic does not match. Topics starting with ``$`` never match a wildcard first
    level (MQTT 4.7.2)."""
    matched: list[str] = []
    if topic and topic[0].startswith("$") and levels and levels[0] in ("+", "#"):
        return None
    for i, level in enumerate(levels):
        if level == "#":
            return matched + list(topic[i:])
        if i >= len(topic):
            return None
        if level == "+":
            matched.append(topic[i])
        elif level != topic[i]:
            return None
    return matched if len(levels) == len(topic) else None


class Namer:
    """Topic -> the device part of its metric names, for one sensor's filters. Remembers the
    names it made (at most ``cache`` topics, then it starts over)."""

    __slots__ = ("_cache", "_filters", "cache", "style")

    def __init__(self, filters: Sequence[str], style: NameStyle, cache: int = 4096) -> None:
        self._filters = [f.split("/") for f in filters]
        self.style = style
        self.cache = cache
        self._cache: dict[str, str | None] = {}

    def name(self, topic: str) -> str | None:
        """None when no filter matches the topic (a broker sending what we did not ask for)."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        levels = topic.split("/")
        out: str | None = None
        for f in self._filters:
            matched = topic_matches(f, levels)
            if matched is None:
                continue
            if self.style == "topic":
                parts = levels
            elif self.style == "last" or not matched:
                parts = levels[-1:]
            else:
                parts = matched
            out = _bounded(".".join(safe_level(p) for p in parts), MAX_NAME)
            break
        if len(self._cache) >= self.cache:
            self._cache.clear()
        self._cache[topic] = out
        return out


# -- payloads ---------------------------------------------------------------------------------
def _scalar(value: object) -> Value | None:
    """A JSON value as a reading, or None when it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        flag = _BOOLS.get(value.strip().lower())
        if flag is not None:
            return flag
        return value if len(value) <= MAX_STRING and value.isprintable() else None
    return None


def _leaves(prefix: str, node: Mapping[str, object], depth: int) -> Iterator[tuple[str, Value]]:
    for key, value in node.items():
        name = f"{prefix}{safe_level(key)}"
        if isinstance(value, dict):
            if depth < MAX_DEPTH:
                yield from _leaves(name + ".", value, depth + 1)
            continue
        reading = _scalar(value)
        if reading is not None:
            yield name, reading


def _path(node: object, path: Sequence[str]) -> object:
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _plain(text: str) -> Value:
    flag = _BOOLS.get(text.lower())
    if flag is not None:
        return flag
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        reading = _scalar(text)
        if reading is None:
            raise Unmapped(
                f"a string of {len(text)} characters is not a reading", "unmapped"
            ) from None
        return reading
    if not math.isfinite(number):
        raise Unmapped(f"{text[:20]!r} is not a finite number", "unmapped")
    return number


def parse_payload(
    payload: bytes, fields: Sequence[tuple[str, Sequence[str]]]
) -> list[tuple[str, Value]]:
    """(field name, reading) pairs of one message; ``fields`` are (name, JSON path) pairs
    (empty: every leaf of an object). Raises `Unmapped` for a payload that gives none."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Unmapped("the payload is not UTF-8 text", "malformed") from None
    if not text:
        raise Unmapped("an empty payload", "unmapped")
    if text[0] in "{[":
        try:
            doc = _decode.decode(text)
        except msgspec.DecodeError as exc:
            raise Unmapped(f"malformed JSON: {exc}", "malformed") from None
        if not isinstance(doc, dict):
            raise Unmapped("a JSON array is not a reading (an object or a value is)", "unmapped")
        if fields:
            out = []
            for name, path in fields:
                reading = _scalar(_path(doc, path))
                if reading is not None:
                    out.append((name, reading))
        else:
            out = list(_leaves("", doc, 1))
        if not out:
            raise Unmapped("the JSON object has none of the fields", "unmapped")
        return out
    if text[0] == '"':
        try:
            value = _decode.decode(text)
        except msgspec.DecodeError as exc:
            raise Unmapped(f"malformed JSON: {exc}", "malformed") from None
        reading = _scalar(value)
        if reading is None:
            raise Unmapped("the JSON string is not a reading", "unmapped")
        return [("value", reading)]
    if text == "null":
        raise Unmapped("null", "unmapped")
    return [("value", _plain(text))]
