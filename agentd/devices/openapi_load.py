"""Reading an OpenAPI document (JSON or YAML) into a plain tree, within bounds: the file is a
regular one of at most ``max_spec_bytes``, the tree at most `MAX_NODES` values and `MAX_DEPTH`
levels deep. Every problem is one `SpecError` naming the place.

YAML goes through PyYAML's safe loader (its C version when there is one) with YAML 1.2
core-schema scalars (``on``, ``no``, ``0777``, ``1:20`` and dates stay the strings written) and
duplicate keys refused; PyYAML is imported only for a YAML file, so a JSON spec never loads it.
Aliases are allowed, but the document is copied into a plain tree of at most `MAX_NODES` values
(an alias bomb stops there)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from typing import Any

import msgspec

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "SpecError",
    "dotted",
    "load_document",
    "one_line",
    "parse_document",
    "read_document",
]

#: values (objects, arrays, scalars) a document may have once its aliases are expanded
MAX_NODES = 1_000_000
#: nesting a document may have
MAX_DEPTH = 200


class SpecError(ValueError):
    """A document that cannot be used: ``place: what is wrong`` (one line)."""

    def __init__(self, place: str, problem: str) -> None:
        super().__init__(f"{place}: {problem}" if place else problem)


def one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def dotted(parts: Collection[object]) -> str:
    return ".".join(str(p) for p in parts)


# -- reading ------------------------------------------------------------------------------------
def load_document(path: str, max_bytes: int) -> dict[str, Any]:
    """The document at ``path`` as a plain tree of dicts, lists and scalars."""
    return parse_document(path, read_document(path, max_bytes))


def read_document(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them."""
    try:
        # O_NONBLOCK: a FIFO put where the spec should be is refused, not waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SpecError("", "no such file") from None
    except PermissionError:
        raise SpecError("", "cannot be read (permission denied)") from None
    except OSError as exc:
        raise SpecError("", f"cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError("", "not a regular file")
        if st.st_size > max_bytes:
            raise SpecError("", f"{st.st_size} bytes, more than max_spec_bytes ({max_bytes})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise SpecError("", f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SpecError("", f"more than max_spec_bytes ({max_bytes}) bytes")
    return data


def parse_document(path: str, data: bytes) -> dict[str, Any]:
    """``data`` (read from ``path``: its suffix says JSON or YAML) as a plain tree."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"not UTF-8 text (byte {exc.start})") from None
    as_json = path.endswith(".json") or (
        not path.endswith((".yaml", ".yml")) and text.lstrip().startswith("{")
    )
    try:
        raw: object = msgspec.json.decode(text) if as_json else _load_yaml(text)
    except msgspec.DecodeError as exc:
        raise SpecError("", f"not valid JSON: {one_line(str(exc))}") from None
    except RecursionError:
        raise SpecError("", f"nested deeper than {MAX_DEPTH} levels") from None
    doc = _plain(raw)
    if not isinstance(doc, dict):
        raise SpecError("", "not an OpenAPI document (the top level is not an object)")
    return doc


def _load_yaml(text: str) -> object:
    import yaml

    loader = _yaml_loader()
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError("", f"not valid YAML: {one_line(exc.problem or str(exc))}{at}") from None
    except yaml.YAMLError as exc:
        raise SpecError("", f"not valid YAML: {one_line(str(exc))}") from None


_LOADER: list[type[Any]] = []


def _yaml_loader() -> type[Any]:
    """A safe loader with YAML 1.2 core-schema scalars that refuses duplicate keys."""
    if _LOADER:
        return _LOADER[0]
    import yaml

    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        pass

    # only null/bool/int/float of YAML 1.2's core schema: YAML 1.1's `on`, `no`, `0777`,
    # `1:20` and dates would silently become something else than the string written
    Loader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag == "tag:yaml.org,2002:null"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    core = [
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        (
            "tag:yaml.org,2002:float",
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+0123456789.",
        ),
    ]
    for tag, rx, first in core:
        Loader.add_implicit_resolver(tag, re.compile(rx), list(first))

    def construct_int(loader: Any, node: Any) -> int:
        text = loader.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)

    def construct_mapping(loader: Any, node: Any) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key that is not a scalar", key_node.start_mark
                )
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            out[key] = loader.construct_object(value_node, deep=True)
        return out

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    Loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    _LOADER.append(Loader)
    return Loader


def _plain(raw: object) -> object:
    """A copy of ``raw`` made of str-keyed dicts, lists and JSON scalars, within the bounds."""
    budget = [MAX_NODES]

    def walk(node: object, depth: int, where: list[str]) -> object:
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError("", f"more than {MAX_NODES} values (YAML aliases expanding?)")
        if depth > MAX_DEPTH:
            raise SpecError(dotted(where), f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            out: dict[str, object] = {}
            for k, v in node.items():
                # YAML reads `200:` (a response code) as a number: keys are strings in JSON
                key = k if isinstance(k, str) else ("null" if k is None else str(k).lower())
                out[key] = walk(v, depth + 1, [*where, key])
            return out
        if isinstance(node, list):
            return [walk(v, depth + 1, [*where, str(i)]) for i, v in enumerate(node)]
        if node is None or isinstance(node, str | int | float | bool):
            return node
        kind = type(node).__name__
        raise SpecError(dotted(where), f"a {kind} value is not JSON (quote it)")

    return walk(raw, 0, [])
