"""``$ref``s and schemas of an OpenAPI document: local references followed (a remote one is
refused), and schemas turned into JSON Schema 2020-12 for the action's params.

Schema ``$ref``s become ``#/$defs/NAME`` (``#/components/schemas/Pump`` -> ``#/$defs/Pump``),
so recursive schemas work and a shared one is not copied. OpenAPI 3.0's own keywords are turned
into JSON Schema: ``nullable: true`` adds ``"null"`` to the type (or wraps an untyped schema in
``anyOf``), boolean ``exclusiveMinimum``/``exclusiveMaximum`` become the numeric form; siblings
of a 3.0 ``$ref`` are dropped, as 3.0 says. Every schema here describes a request, so a required
``readOnly`` property is not required (OpenAPI: it is required in responses only)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from agentd.devices.openapi_load import SpecError, dotted

__all__ = ["Schemas", "deref", "pointer"]

_DEF_NAME = re.compile(r"[A-Za-z0-9._\-]{1,128}")


def pointer(doc: Mapping[str, Any], ref: object, where: str) -> tuple[Any, str]:
    """The node a local ``$ref`` names and its place; SpecError for any other."""
    from urllib.parse import unquote

    place = f"{where}.$ref"
    if not isinstance(ref, str):
        raise SpecError(place, "a $ref is a string")
    if not ref.startswith("#"):
        raise SpecError(
            place, f"{ref[:80]!r} is a remote reference (only local '#/...' ones are supported)"
        )
    node: Any = doc
    parts: list[str] = []
    fragment = unquote(ref[1:])
    for raw in fragment.split("/")[1:] if fragment else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SpecError(place, f"{ref[:80]!r} points to nothing")
        parts.append(part)
    return node, dotted(parts)


def deref(doc: Mapping[str, Any], node: Any, where: str) -> tuple[Any, str]:
    """Follow ``$ref``s from an OpenAPI object (a parameter, a request body, a path item)."""
    for _ in range(32):
        if not (isinstance(node, dict) and "$ref" in node):
            return node, where
        node, where = pointer(doc, node["$ref"], where)
    raise SpecError(where, "a cycle of $refs")


class Schemas:
    """Converts schemas to JSON Schema 2020-12, collecting the ``$ref``ed ones as defs."""

    _SCHEMA: tuple[str, ...] = ("additionalProperties", "not", "contains", "propertyNames")
    _SCHEMA += (
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
        "additionalItems",
    )
    _LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
    _MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

    def __init__(
        self,
        doc: Mapping[str, Any],
        v30: bool,
        check: Callable[[object, str], str | None] | None = None,
    ) -> None:
        self.doc = doc
        self.v30 = v30
        self.check = check
        #: def name -> converted schema; ref -> def name; def name -> the defs it refers to
        self.defs: dict[str, Any] = {}
        self.names: dict[str, str] = {}
        self.uses: dict[str, set[str]] = {}
        self.places: dict[str, str] = {}

    def checked(self, schema: Any, where: str, uses: set[str]) -> Any:
        """`convert`, then refused (one line) if it is not a valid JSON Schema."""
        out = self.convert(schema, where, uses)
        problem = self.check(out, where) if self.check is not None else None
        if problem:
            raise SpecError("", problem)
        return out

    def convert(self, schema: Any, where: str, uses: set[str]) -> Any:
        if isinstance(schema, bool):
            return schema
        if not isinstance(schema, dict):
            raise SpecError(where, f"a schema is an object, not {type(schema).__name__}")
        if "$ref" in schema:
            name = self._def(schema["$ref"], where)
            uses.add(name)
            ref = {"$ref": f"#/$defs/{name}"}
            if self.v30:
                return ref  # 3.0: "sibling values alongside a $ref SHALL be ignored"
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return {**ref, **self.convert(rest, where, uses)} if rest else ref
        out: dict[str, Any] = {}
        for key, value in schema.items():
            at = f"{where}.{key}"
            if key in self._SCHEMA or (key == "items" and isinstance(value, dict | bool)):
                out[key] = self.convert(value, at, uses)
            elif key in self._LISTS or key == "items":
                if not isinstance(value, list):
                    raise SpecError(at, "expected a list of schemas")
                out[key] = [self.convert(v, f"{at}.{i}", uses) for i, v in enumerate(value)]
            elif key in self._MAPS:
                if not isinstance(value, dict):
                    raise SpecError(at, "expected an object of schemas")
                out[key] = {k: self.convert(v, f"{at}.{k}", uses) for k, v in value.items()}
            else:
                out[key] = value
        props, required = out.get("properties"), out.get("required")
        if isinstance(props, dict) and isinstance(required, list):
            # every schema here describes a request: OpenAPI says a required readOnly property
            # is required in responses only (a server-assigned id is not sent)
            out["required"] = [
                r
                for r in required
                if not (isinstance(props.get(r), dict) and props[r].get("readOnly") is True)
            ]
        return self._from_30(out) if self.v30 else out

    @staticmethod
    def _from_30(s: dict[str, Any]) -> dict[str, Any]:
        for bound, limit in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
            flag = s.get(bound)
            if isinstance(flag, bool):
                del s[bound]
                if flag and limit in s:
                    s[bound] = s.pop(limit)
        if s.pop("nullable", False) is True:
            kind = s.get("type")
            if isinstance(kind, str):
                s["type"] = [kind, "null"]
                if isinstance(s.get("enum"), list) and None not in s["enum"]:
                    s["enum"] = [*s["enum"], None]
            elif kind is None:
                return {"anyOf": [s, {"type": "null"}]}
        return s

    def _def(self, ref: object, where: str) -> str:
        target, place = pointer(self.doc, ref, where)
        assert isinstance(ref, str)
        if ref in self.names:
            return self.names[ref]
        tail = ref.removeprefix("#/components/schemas/")
        ok = tail != ref and _DEF_NAME.fullmatch(tail) and tail not in self.defs
        name = tail if ok else f"@{len(self.names) + 1}"  # '@': never a component's name
        self.names[ref] = name
        self.places[name] = place
        uses: set[str] = set()
        self.defs[name] = True  # reserved while converting (a recursive schema names itself)
        self.defs[name] = self.checked(target, place, uses)
        self.uses[name] = uses
        return name

    def closure(self, names: set[str]) -> dict[str, Any]:
        todo, seen = list(names), set()
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += self.uses.get(n, ())
        return {n: self.defs[n] for n in sorted(seen)}
