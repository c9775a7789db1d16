"""`openapi` actuator: the operations of an OpenAPI 3.0/3.1 document (JSON or YAML) as actions.
Every operation with an ``x-tool-name`` (or else an ``operationId``) is an action named by it;
its params are the operation's path, query and header parameters, and its JSON request body
under the param ``body_param`` (``body``); they are checked against the JSON Schema generated
from the document (`agentd schema actuator:NAME` shows it) before anything is sent.

The document is read and compiled when the config is validated (``check-config``, ``agentd
run``, a reload), so a bad one is refused with one line naming the place in it; the compiled
form lives on the config (`OpenAPIConfig.compiled`), which is how ``offers()``,
``action_schemas()`` and ``needs()`` answer without a running actuator. The request itself is
the shared HTTP client's (agentd/plugins/builtin/_http.py, as `webhook`): one connection per
call, ``request_timeout``, at most ``max_response`` bytes read, headers from the config, a
systemd credential or a file, all secret. The implementation (agentd/devices/openapi.py) and
PyYAML and jsonschema are imported only when an openapi actuator is configured."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from msgspec import Meta

from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin._http import HTTPClientConfig
from agentd.plugins.paramschema import AnyParams
from agentd.secrets import SECRET_URL

if TYPE_CHECKING:
    from agentd.devices.openapi import OpenAPIActuator
    from agentd.devices.openapi_spec import CompiledSpec

__all__ = ["MAX_SPEC", "SPEC", "OpenAPIConfig", "build"]

#: the largest spec file ``max_spec_bytes`` may allow
MAX_SPEC = 16 * 1024 * 1024


class OpenAPIConfig(HTTPClientConfig, forbid_unknown_fields=True, kw_only=True, dict=True):
    #: absolute path of the OpenAPI document (``.json``, ``.yaml``/``.yml``; else by its text)
    spec: str
    #: what the document's paths are appended to (``http://192.168.1.60/api/v1``); the
    #: document's ``servers`` are not read. Its ``user:password@`` part is secret (not sent)
    base_url: Annotated[str, SECRET_URL]
    #: only these operations (by action name) become actions; the others, and any problem
    #: they have, are ignored. None: every operation that has a name
    operations: Annotated[list[str], Meta(min_length=1, max_length=1000)] | None = None
    #: the param that holds an operation's JSON request body
    body_param: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] = "body"
    #: bytes the document may have
    max_spec_bytes: Annotated[int, Meta(ge=1024, le=MAX_SPEC)] = 1024 * 1024
    #: bytes of a response body read and kept (a longer one is cut, and says so)
    max_response: Annotated[int, Meta(ge=0, le=16 * 1024 * 1024)] = 64 * 1024

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"`base_url` {self.base_url!r} is not an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise ValueError("`base_url`: no query or fragment (the operation's path follows it)")
        self.check_headers()
        if not os.path.isabs(self.spec):
            raise ValueError(f"`spec`: {self.spec!r} is not an absolute path")
        self.compiled  # noqa: B018 - compiled now: a bad document is a config error

    @functools.cached_property
    def compiled(self) -> CompiledSpec:
        """The document's operations (read once per config object)."""
        from agentd.devices.openapi_load import SpecError
        from agentd.devices.openapi_spec import compile_spec
        from agentd.plugins.paramschema import schema_problem

        try:
            return compile_spec(
                self.spec,
                max_bytes=self.max_spec_bytes,
                operations=self.operations,
                body_param=self.body_param,
                reserved_headers=self.header_names(),
                check_schema=schema_problem,
            )
        except SpecError as exc:
            raise ValueError(f"`spec` {self.spec}: {exc}") from None

    def reload_key(self) -> str:
        """What a reload compares besides the table: the document's bytes (a spec file edited
        in place, then `systemctl reload`, rebuilds the actuator) and the header secrets."""
        return f"{self.compiled.digest}:{super().reload_key()}"

    # -- declarations for check-config and `agentd schema` -------------------------------------
    def offers(self) -> list[str]:
        return list(self.compiled.operations)

    def needs(self, action: str) -> set[str]:
        """The params ``action`` requires (a path parameter, a required body)."""
        op = self.compiled.operations.get(action)
        required = op.schema.get("required", []) if op else []
        return {str(r) for r in required}

    def action_schemas(self) -> Mapping[str, Mapping[str, Any]]:
        return {name: op.schema for name, op in self.compiled.operations.items()}


def build(config: OpenAPIConfig) -> OpenAPIActuator:
    from agentd.devices.openapi import OpenAPIActuator

    return OpenAPIActuator(config)


SPEC = PluginSpec(
    name="openapi",
    kind="actuator",
    factory=build,
    config_type=OpenAPIConfig,
    description="call the operations of an OpenAPI 3.0/3.1 document over HTTP (validated params)",
    actions={"*": AnyParams},
    idempotent=False,
)
