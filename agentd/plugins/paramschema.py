"""Action params checked against a JSON Schema (jsonschema, Draft 2020-12 unless the schema's
``$schema`` names another draft), for actuators whose actions are declared in their config or
generated from a document: an `openapi` operation, an `mqtt` actuator's declared actions, a
`modbus` register write.

Such an actuator declares ``actions = {"*": AnyParams}`` in its `PluginSpec`, names its actions
with ``offers()`` on its config (check-config, `agentd schema`), and runs `params_problem` from
its ``validate(action)``, which the action path calls before anything is sent. Its config
Struct may also have ``action_schemas() -> Mapping[str, Mapping[str, object]]`` (action name ->
params schema) so ``agentd schema actuator:NAME`` can show them (`declared_action_schemas`).

jsonschema (and its referencing/rpds-py) is imported on the first check, not when the registry
is: the default config never loads it. A schema is compiled once per object (`ParamsSchema`).
Every error is one line naming the param (``params.speed: 300 is greater than the maximum of
100``), its quoted value cut to `QUOTE` characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = [
    "QUOTE",
    "AnyParams",
    "ParamsSchema",
    "declared_action_schemas",
    "params_problem",
    "schema_problem",
]

#: characters of an offending value (or schema text) quoted in an error
QUOTE = 80


class AnyParams(msgspec.Struct, kw_only=True):
    """Params checked by the actuator's own schema (``validate``), not by a Struct."""


def _one_line(text: str, limit: int = 4 * QUOTE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _validator_class(schema: Mapping[str, object]) -> type[Validator]:
    from jsonschema import Draft202012Validator, validators

    cls: type[Validator] = validators.validator_for(schema, default=Draft202012Validator)
    return cls


def schema_problem(schema: object, where: str = "schema") -> str | None:
    """Why ``schema`` is not a valid JSON Schema (one line naming the place), or None."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, Mapping):
        return f"{where}: a JSON Schema is an object (a table), not {type(schema).__name__}"
    from jsonschema.exceptions import SchemaError

    try:
        _validator_class(schema).check_schema(dict(schema))
    except SchemaError as exc:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        return f"{where}{path}: {_one_line(exc.message)}"
    return None


class ParamsSchema:
    """One action's params schema, compiled on first use."""

    __slots__ = ("_validator", "schema")

    def __init__(self, schema: Mapping[str, object]) -> None:
        self.schema = schema
        self._validator: Validator | None = None

    def problem(self, params: Mapping[str, object], where: str = "params") -> str | None:
        """None if ``params`` satisfies the schema, else one line naming the first bad param."""
        from jsonschema.exceptions import best_match

        if self._validator is None:
            cls = _validator_class(self.schema)
            self._validator = cls(self.schema, format_checker=cls.FORMAT_CHECKER)
        instance: Any = dict(params)
        error = best_match(self._validator.iter_errors(instance))
        if error is None:
            return None
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return f"{where}{path}: {_one_line(_quoted(error.message))}"


def _quoted(message: str) -> str:
    # jsonschema quotes the whole offending value; a long string or a big object is cut
    if len(message) <= 4 * QUOTE:
        return message
    return message[: 2 * QUOTE] + " ... " + message[-QUOTE:]


def params_problem(
    schema: Mapping[str, object], params: Mapping[str, object], where: str = "params"
) -> str | None:
    """`ParamsSchema(schema).problem(params)` for a one-off check (compiles every call)."""
    return ParamsSchema(schema).problem(params, where)


def declared_action_schemas(config: object) -> Mapping[str, Mapping[str, Any]] | None:
    """An actuator config's ``action_schemas()`` (action -> params schema), or None."""
    schemas = getattr(config, "action_schemas", None)
    if not callable(schemas):
        return None
    out = schemas()
    return out if isinstance(out, Mapping) else None
