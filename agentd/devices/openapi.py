"""The `openapi` actuator at run time: an action's params checked against its operation's
schema, then turned into one HTTP request (agentd/plugins/builtin/openapi.py has the config).

A path parameter fills exactly one path segment: its value may not be empty, ``.`` or ``..``,
nor hold a ``/``, a ``\\`` or a control character (refused, not encoded: some servers decode
``%2F`` before routing), and the rest is percent-encoded, so a param never steers the request
outside the operation's path. Query parameters go through ``urlencode``; header parameters must
be printable ASCII; the body is JSON. The answer's body (JSON -> its value, else text, with
every secret taken out) is the action's output with its status; a non-2xx answer fails the call
with the status and a short redacted excerpt."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from agentd.devices.openapi_spec import Operation, ParamSpec
from agentd.model import Action
from agentd.plugins.base import ActuatorReply
from agentd.plugins.builtin._http import HTTPClient, HTTPError
from agentd.plugins.builtin.openapi import OpenAPIConfig
from agentd.plugins.paramschema import ParamsSchema

__all__ = ["OpenAPIActuator", "Refused", "build_request"]

_SLOT = re.compile(r"\{([^{}/]+)\}")
#: what the template's own text keeps unencoded (RFC 3986 pchar, '/' and an existing '%XX')
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_DELIMITERS = {"spaceDelimited": " ", "pipeDelimited": "|", "form": ",", "simple": ","}


class Refused(ValueError):
    """A param value that cannot go where its operation puts it (the one-line reason)."""


def _text(spec: ParamSpec, value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and spec.integer and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    if value is None:
        return ""
    raise Refused(f"{where}: a nested array or object cannot go into a {spec.location} parameter")


def _segment(spec: ParamSpec, value: object, where: str) -> str:
    if isinstance(value, list):
        text = ",".join(_text(spec, v, f"{where}[{i}]") for i, v in enumerate(value))
    else:
        text = _text(spec, value, where)
    if text in ("", ".", "..") or any(c in text for c in "/\\") or not text.isprintable():
        raise Refused(
            f"{where}: {text[:40]!r} cannot be a path segment (not empty, '.' or '..', "
            "no '/', '\\' or control characters)"
        )
    return quote(text, safe="")


def _query(spec: ParamSpec, value: object, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, list):
        items = [_text(spec, v, f"{where}[{i}]") for i, v in enumerate(value)]
        if spec.explode:
            return [(spec.name, t) for t in items]
        return [(spec.name, _DELIMITERS[spec.style].join(items))]
    if isinstance(value, dict):
        pairs = [(str(k), _text(spec, v, f"{where}.{k}")) for k, v in value.items()]
        if spec.style == "deepObject":
            return [(f"{spec.name}[{k}]", t) for k, t in pairs]
        return pairs  # form, exploded: each property is its own query parameter
    return [(spec.name, _text(spec, value, where))]


def _header(spec: ParamSpec, value: object, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        text = ",".join(_text(spec, v, f"{where}[{i}]") for i, v in enumerate(value))
    else:
        text = _text(spec, value, where)
    if not (text.isascii() and text.isprintable()):
        raise Refused(f"{where}: {text[:40]!r} is not printable ASCII (a header value)")
    return text


def _fill(template: str, segments: Mapping[str, str], where: str) -> str:
    """The template with each ``{name}`` replaced by its encoded segment; the template's own
    text (the document's, never a param's) encoded as a URL path is."""
    out = []
    for i, part in enumerate(_SLOT.split(template)):
        if i % 2 == 0:
            out.append(quote(part, safe=_PATH_SAFE))
        elif part in segments:
            out.append(segments[part])
        else:
            raise Refused(f"{where}.{part}: required (a path parameter)")
    return "".join(out)


def build_request(
    op: Operation, params: Mapping[str, Any], base_url: str
) -> tuple[str, bytes | None, dict[str, str]]:
    """(URL, JSON body or None, header params) for ``op`` called with ``params`` (already
    checked against its schema); `Refused` for a value that cannot go where it belongs."""
    where = f"{op.name}.params"
    segments: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for spec in op.params:
        if spec.name not in params:
            continue
        value = params[spec.name]
        at = f"{where}.{spec.name}"
        if spec.location == "path":
            segments[spec.name] = _segment(spec, value, at)
        elif spec.location == "query":
            query += _query(spec, value, at)
        else:
            text = _header(spec, value, at)
            if text is not None:
                headers[spec.name] = text
    url = base_url.rstrip("/") + _fill(op.path, segments, where)
    if query:
        url += "?" + urlencode(query, quote_via=quote)
    body = None
    if op.body is not None and op.body in params:
        body = msgspec.json.encode(params[op.body])
    return url, body, headers


class OpenAPIActuator:
    def __init__(self, config: OpenAPIConfig) -> None:
        self.config = config
        self.operations = config.compiled.operations
        self.http = HTTPClient(config, config.base_url)
        #: the base URL without its user:password (it is never sent)
        self.base_url = self.http.shown_url
        self.checks = {name: ParamsSchema(op.schema) for name, op in self.operations.items()}

    async def start(self) -> None:
        await asyncio.to_thread(self.http.load_secrets)

    def _prepare(self, action: Action) -> tuple[Operation, str, bytes | None, dict[str, str]]:
        op = self.operations.get(action.name)
        if op is None:
            offered = ", ".join(sorted(self.operations))
            raise Refused(f"no operation {action.name!r} in the spec (offers: {offered})")
        problem = self.checks[op.name].problem(action.params, f"{op.name}.params")
        if problem is not None:
            raise Refused(problem)
        url, body, headers = build_request(op, action.params, self.base_url)
        return op, url, body, headers

    def validate(self, action: Action) -> str | None:
        try:
            self._prepare(action)
        except Refused as exc:
            return str(exc)
        return None

    async def act(self, action: Action) -> ActuatorReply:
        op, url, body, headers = self._prepare(action)
        res = await self.http.send(op.method, url, body, headers)
        raw = res.body.decode("utf-8", "replace")
        if not 200 <= res.status < 300:
            shown = url.removeprefix(self.base_url.rstrip("/")).split("?", 1)[0]
            raise HTTPError(
                f"{op.method} {self.http.redact(shown)} answered {res.status}: "
                f"{self.http.excerpt(raw)}"
            )
        # a server may echo the request: the journal keeps the body without the secrets
        text = self.http.redact(raw)
        output: dict[str, object] = {"status": res.status, "body": _decoded(res.content_type, text)}
        if res.truncated:
            output["body"] = text  # a cut JSON document is not JSON
            output["truncated"] = True
        return ActuatorReply(output=output)


def _decoded(media: str, text: str) -> object:
    """A JSON answer as its value, anything else as text (an empty body: None)."""
    if not text:
        return None
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError:
            return text
    return text
