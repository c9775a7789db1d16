"""An OpenAPI 3.0/3.1 document (JSON or YAML) read and compiled into actions, once, when the
config is validated: every operation with an ``x-tool-name`` (or else an ``operationId``)
becomes an `Operation` whose params JSON Schema has one property per path, query and header
parameter and, for a JSON request body, one property named ``body_param`` holding the body
whole (so its schema is used unchanged, and a body field never collides with a parameter).

What is refused, each as one `SpecError` naming the place (``paths./pump/{id}.post.requestBody``):
a missing, unreadable, non-regular or too big file; text that is not JSON/YAML; a document that
is not OpenAPI 3.0/3.1; a remote ``$ref`` (only ``#/...`` ones are followed); a ``$ref`` to
nothing or a cycle of them outside schemas; two operations with one name; cookie parameters,
``content`` parameters and the styles `agentd.devices.openapi` cannot encode; a path template
and its path parameters that do not match; a required body that is not JSON.

Schemas and ``$ref``s are agentd/devices/openapi_schema.py's; reading the file (JSON or YAML,
bounded) is agentd/devices/openapi_load.py's."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agentd.devices.openapi_load import (
    MAX_DEPTH,
    SpecError,
    one_line,
    parse_document,
    read_document,
)
from agentd.devices.openapi_schema import Schemas, deref

__all__ = [
    "CACHED",
    "METHODS",
    "CompiledSpec",
    "Operation",
    "ParamSpec",
    "SpecError",
    "compile_spec",
]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_TEMPLATE = re.compile(r"\{([^{}/]+)\}")
#: header parameters OpenAPI says to ignore (the request's own)
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
#: headers that frame the request (the client writes them): a param never sets one
_FRAMING = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te"}
    | {"trailer", "upgrade", "expect", "user-agent", "proxy-authorization", "proxy-connection"}
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_STYLES = {
    "path": ("simple",),
    "query": ("form", "spaceDelimited", "pipeDelimited", "deepObject"),
    "header": ("simple",),
}
Location = Literal["path", "query", "header"]
Shape = Literal["primitive", "array", "object"]


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    location: Location
    style: str
    explode: bool
    shape: Shape
    #: the schema says integer: a whole float (TOML ``40.0``) is sent as ``40``
    integer: bool


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    #: upper case
    method: str
    #: the path template, ``/pump/{id}``
    path: str
    #: where it is in the document, ``paths./pump/{id}.post``
    where: str
    params: tuple[ParamSpec, ...]
    #: the param holding the JSON body, or None when the operation takes none
    body: str | None
    #: the params' JSON Schema (Draft 2020-12)
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CompiledSpec:
    file: str
    #: sha256 of the document's bytes: a reload rebuilds the actuator when it changed
    digest: str
    #: the document's ``openapi`` version
    version: str
    title: str
    operations: Mapping[str, Operation]


#: spec files whose compiled form is kept for the next load of the same bytes with the same
#: options (a reload, the fleet's check of a config: the daemon loads its config on the event
#: loop, and compiling a 1 MiB document takes a good part of a second)
CACHED = 8
_CACHE: OrderedDict[tuple[object, ...], tuple[bytes, CompiledSpec]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


# -- operations ---------------------------------------------------------------------------------
def compile_spec(
    path: str,
    *,
    max_bytes: int,
    operations: Collection[str] | None = None,
    body_param: str = "body",
    reserved_headers: Collection[str] = (),
    check_schema: Callable[[object, str], str | None] | None = None,
) -> CompiledSpec:
    """Read and compile the document at ``path``. ``operations`` keeps only those (and their
    problems); ``reserved_headers`` (lower case) are configured ones a parameter may not set;
    ``check_schema(schema, place)`` says why a schema is not valid JSON Schema."""
    data = read_document(path, max_bytes)
    wanted = tuple(operations) if operations is not None else None
    digest = hashlib.sha256(data).digest()
    key = (path, wanted, body_param, frozenset(reserved_headers), check_schema)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == digest:
            _CACHE.move_to_end(key)
            return hit[1]
    try:
        compiled = _compile(path, data, wanted, body_param, reserved_headers, check_schema)
        compiled = dataclasses.replace(compiled, digest=digest.hex())
    except RecursionError:
        raise SpecError("", f"nested deeper than {MAX_DEPTH} levels") from None
    with _CACHE_LOCK:
        _CACHE[key] = (digest, compiled)  # the latest document of that file, not every one
        while len(_CACHE) > CACHED:
            _CACHE.popitem(last=False)
    return compiled


def _compile(
    path: str,
    data: bytes,
    wanted: Collection[str] | None,
    body_param: str,
    reserved: Collection[str],
    check: Callable[[object, str], str | None] | None,
) -> CompiledSpec:
    doc = parse_document(path, data)
    version = doc.get("openapi")
    if not isinstance(version, str) or not re.match(r"3\.[01](\.|$)", version):
        if "swagger" in doc:
            raise SpecError("swagger", "a Swagger 2.0 document, not OpenAPI 3.0/3.1")
        shown = "missing" if version is None else f"{str(version)[:20]!r}"
        raise SpecError("openapi", f"{shown}: not an OpenAPI 3.0 or 3.1 document")
    paths = doc.get("paths", {})
    if not isinstance(paths, dict):
        raise SpecError("paths", "expected an object")
    found: dict[str, list[tuple[str, str, dict[str, Any], list[Any], str]]] = {}
    for template, raw_item in paths.items():
        item, item_at = deref(doc, raw_item, f"paths.{template}")
        if not isinstance(item, dict):
            raise SpecError(item_at, "a path item is an object")
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            where = f"paths.{template}.{method}"
            name = op.get("x-tool-name") or op.get("operationId")
            if name is None:
                continue  # not a tool
            key = "x-tool-name" if "x-tool-name" in op else "operationId"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                if wanted is None or name in wanted:
                    raise SpecError(
                        f"{where}.{key}",
                        f"{str(name)[:60]!r} is not an action name (letters, digits, '_.-')",
                    )
                continue
            common = item.get("parameters", [])
            found.setdefault(name, []).append((template, method, op, common, where))
    if wanted is not None:
        for i, name in enumerate(wanted):
            if name not in found:
                from agentd.config_refs import did_you_mean

                hint = did_you_mean(name, found)
                raise SpecError(f"operations[{i}]", f"{name!r}: no such operation{hint}")
    schemas = Schemas(doc, version.startswith("3.0"), check)
    ops: dict[str, Operation] = {}
    for name, places in found.items():
        if wanted is not None and name not in wanted:
            continue
        if len(places) > 1:
            first, other = places[0][4], places[1][4]
            raise SpecError(other, f"operation name {name!r} is also {first}'s: names are unique")
        template, method, op, common, where = places[0]
        ops[name] = _operation(
            schemas, name, template, method, op, common, where, body_param, reserved
        )
    if not ops:
        raise SpecError("paths", "no operation has an operationId or x-tool-name")
    info = doc.get("info")
    title = info.get("title") if isinstance(info, dict) else None
    return CompiledSpec(
        file=path, digest="", version=version, title=str(title or ""), operations=ops
    )


def _operation(
    schemas: Schemas,
    name: str,
    template: str,
    method: str,
    op: dict[str, Any],
    common: Any,
    where: str,
    body_param: str,
    reserved: Collection[str],
) -> Operation:
    doc = schemas.doc
    merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for table, at in (
        (common, f"paths.{template}.parameters"),
        (op.get("parameters", []), f"{where}.parameters"),
    ):
        if not isinstance(table, list):
            raise SpecError(at, "expected a list of parameters")
        for i, raw in enumerate(table):
            p, p_at = deref(doc, raw, f"{at}.{i}")
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise SpecError(p_at, "a parameter is an object with a `name`")
            merged[(p["name"], str(p.get("in")))] = (p, p_at)
    props: dict[str, Any] = {}
    required: list[str] = []
    uses: set[str] = set()
    params: list[ParamSpec] = []
    owner: dict[str, str] = {}
    for (pname, loc), (p, p_at) in merged.items():
        if loc == "header" and pname.lower() in _IGNORED_HEADERS:
            continue  # OpenAPI: "the parameter definition SHALL be ignored"
        spec = _param(schemas, pname, loc, p, p_at, reserved)
        if pname == body_param and "requestBody" in op:
            raise SpecError(
                p_at, f"parameter {pname!r} has the body's param name: set `body_param` to another"
            )
        if pname in owner:
            other = owner[pname]
            raise SpecError(p_at, f"parameter {pname!r} has the name of {other}: not supported")
        owner[pname] = f"the {loc} parameter"
        prop = schemas.checked(p.get("schema", {}), f"{p_at}.schema", uses)
        if isinstance(p.get("description"), str) and isinstance(prop, dict):
            prop = {"description": one_line(p["description"], 200), **prop}
        props[pname] = prop
        if p.get("required") is True:
            required.append(pname)
        params.append(spec)
    slots = set(_TEMPLATE.findall(template))
    in_path = {p.name for p in params if p.location == "path"}
    for slot in sorted(slots - in_path):
        raise SpecError(where, f"the path has {{{slot}}} but no path parameter {slot!r}")
    for pname in sorted(in_path - slots):
        raise SpecError(where, f"path parameter {pname!r} is not in the path {template!r}")
    body = _body(schemas, op, where, uses)
    if body is not None:
        props[body_param] = body[0]
        if body[1]:
            required.append(body_param)
    schema: dict[str, Any] = {"type": "object", "title": name}
    summary = op.get("summary") or op.get("description")
    if isinstance(summary, str) and summary.strip():
        schema["description"] = one_line(summary, 200)
    schema["properties"] = props
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    defs = schemas.closure(uses)
    if defs:
        schema["$defs"] = defs
    return Operation(
        name=name,
        method=method.upper(),
        path=template,
        where=where,
        params=tuple(params),
        body=body_param if body is not None else None,
        schema=schema,
    )


def _param(
    schemas: Schemas, name: str, loc: str, p: dict[str, Any], at: str, reserved: Collection[str]
) -> ParamSpec:
    if loc not in _STYLES:
        what = "cookie parameters are" if loc == "cookie" else f"`in: {loc[:20]}` is"
        raise SpecError(f"{at}.in", f"{what} not supported (path, query and header are)")
    if "content" in p and "schema" not in p:
        raise SpecError(f"{at}.content", "a parameter with `content` is not supported")
    if loc == "header" and not _TOKEN.fullmatch(name):
        raise SpecError(f"{at}.name", f"{name[:40]!r} is not a header name")
    if loc == "header" and name.lower() in _FRAMING:
        raise SpecError(f"{at}.name", f"header {name!r} frames the request: not a parameter")
    if loc == "header" and name.lower() in reserved:
        raise SpecError(f"{at}.name", f"header {name!r} is set by the config: not a parameter")
    if loc == "path" and p.get("required") is not True:
        raise SpecError(f"{at}.required", "a path parameter must be required")
    style = p.get("style", "form" if loc == "query" else "simple")
    if style not in _STYLES[loc]:
        allowed = ", ".join(_STYLES[loc])
        raise SpecError(f"{at}.style", f"{str(style)[:30]!r} is not supported here ({allowed})")
    explode = p.get("explode", style == "form")
    if not isinstance(explode, bool):
        raise SpecError(f"{at}.explode", "expected true or false")
    target, _ = deref(schemas.doc, p.get("schema", {}), f"{at}.schema")
    kind = target.get("type") if isinstance(target, dict) else None
    kinds = set(kind) if isinstance(kind, list) else {kind}
    shape: Shape = "object" if "object" in kinds else "array" if "array" in kinds else "primitive"
    if shape == "object" and not (style == "deepObject" or (style == "form" and explode)):
        raise SpecError(f"{at}.style", f"an object in a {loc} parameter is not supported")
    if style in ("spaceDelimited", "pipeDelimited") and (shape != "array" or explode):
        raise SpecError(f"{at}.style", f"{style!r} is supported for an unexploded array only")
    if style == "deepObject" and shape != "object":
        raise SpecError(f"{at}.style", "'deepObject' is for an object parameter")
    return ParamSpec(name, loc, style, explode, shape, integer="integer" in kinds)  # type: ignore[arg-type]


def _body(
    schemas: Schemas, op: dict[str, Any], where: str, uses: set[str]
) -> tuple[Any, bool] | None:
    """(the body's schema, required) for a JSON request body, None when there is none."""
    if "requestBody" not in op:
        return None
    body, at = deref(schemas.doc, op["requestBody"], f"{where}.requestBody")
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict):
        raise SpecError(at, "a request body has a `content` object")
    content: dict[str, Any] = body["content"]
    required = body.get("required") is True
    for media, entry in content.items():
        base = media.split(";", 1)[0].strip().lower()
        if base == "application/json" or (
            base.startswith("application/") and base.endswith("+json")
        ):
            media_at = f"{at}.content.{media}"
            if not isinstance(entry, dict):
                raise SpecError(media_at, "a media type is an object")
            return schemas.checked(entry.get("schema", {}), f"{media_at}.schema", uses), required
    if not required:
        return None  # optional and not JSON: the operation is called without one
    types = ", ".join(list(content)[:4]) or "nothing"
    raise SpecError(at, f"no application/json content (it takes {types}): not supported")
