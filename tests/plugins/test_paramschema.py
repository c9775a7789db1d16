"""Action params against a JSON Schema: one line naming the param, jsonschema loaded lazily."""

from __future__ import annotations

import subprocess
import sys

from agentd.plugins.paramschema import QUOTE, ParamsSchema, params_problem, schema_problem

PUMP = {
    "type": "object",
    "properties": {
        "speed": {"type": "integer", "minimum": 0, "maximum": 100},
        "mode": {"enum": ["auto", "manual"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["speed"],
    "additionalProperties": False,
}


def test_valid_params_pass() -> None:
    check = ParamsSchema(PUMP)
    assert check.problem({"speed": 40, "mode": "auto"}) is None
    assert check.problem({"speed": 0, "tags": ["a", "b"]}) is None


def test_each_error_names_the_param() -> None:
    check = ParamsSchema(PUMP)
    assert check.problem({"speed": 300}) == "params.speed: 300 is greater than the maximum of 100"
    assert check.problem({}) == "params: 'speed' is a required property"
    assert (
        check.problem({"speed": 1, "tags": ["a", 2]}) == "params.tags[1]: 2 is not of type 'string'"
    )
    problem = check.problem({"speed": 1, "colour": "red"})
    assert problem is not None
    assert problem.startswith("params: Additional properties are not allowed ('colour'")


def test_a_huge_value_is_not_quoted_whole() -> None:
    problem = params_problem(
        {"type": "object", "properties": {"x": {"type": "integer"}}},
        {"x": "y" * 10_000},
        where="set.params",
    )
    assert problem is not None
    assert problem.startswith("set.params.x: 'yyy")
    assert len(problem) <= 5 * QUOTE
    assert "\n" not in problem


def test_bad_schemas_are_one_line_naming_the_place() -> None:
    assert schema_problem(PUMP) is None
    assert schema_problem(True) is None
    assert schema_problem([1], "actions.on.params") == (
        "actions.on.params: a JSON Schema is an object (a table), not list"
    )
    bad = {"type": "object", "properties": {"speed": {"type": "integr"}}}
    problem = schema_problem(bad, "actions.on.params")
    assert problem is not None
    assert problem.startswith("actions.on.params.properties.speed.type: 'integr' is not valid")


def test_jsonschema_is_not_imported_until_a_check() -> None:
    code = (
        "import sys; import agentd.plugins.paramschema as p; "
        "assert 'jsonschema' not in sys.modules; "
        "p.params_problem({'type': 'object'}, {}); assert 'jsonschema' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
