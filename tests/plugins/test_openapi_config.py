"""The `openapi` actuator's document at config time: a broken spec refused by `config.load`,
`agentd check-config` and `agentd run` with one line naming the place; `agentd schema
actuator:NAME` showing the generated action schemas; and PyYAML/jsonschema not imported by the
registry or by a config without an openapi actuator."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd import config as cfg
from agentd.errors import ConfigError
from agentd.plugins.registry import default_registry
from tests.plugins.test_openapi import PUMP_SPEC, write_spec

PY = sys.executable


def conf_text(spec: Path | str, extra: str = "", name: str = "pump") -> str:
    return (
        f'[sensors.system]\n[actuators.{name}]\nplugin = "openapi"\nspec = "{spec}"\n'
        f'base_url = "http://127.0.0.1:9/api"\n{extra}'
    )


def load_errors(text: str) -> list[str]:
    try:
        cfg.loads(text, default_registry)
    except ConfigError as exc:
        return list(exc.errors)
    return []


def edited(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    spec = copy.deepcopy(PUMP_SPEC)
    change(spec)
    return spec


def _op(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = spec["paths"][path][method]
    return op


SPEED = "paths./pumps/{id}/speed.post"
BROKEN: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    (
        "remote-ref",
        lambda s: s["components"]["requestBodies"]["Speed"]["content"]["application/json"].update(
            schema={"$ref": "other.yaml#/Speed"}
        ),
        "components.requestBodies.Speed.content.application/json.schema.$ref: 'other.yaml#/Speed'"
        " is a remote reference (only local '#/...' ones are supported)",
    ),
    (
        "dangling-ref",
        lambda s: _op(s, "/pumps/{id}/speed", "post").update(
            requestBody={"$ref": "#/components/requestBodies/Sped"}
        ),
        f"{SPEED}.requestBody.$ref: '#/components/requestBodies/Sped' points to nothing",
    ),
    (
        "ref-cycle",
        lambda s: s["components"]["parameters"].update(
            PumpId={"$ref": "#/components/parameters/Again"},
            Again={"$ref": "#/components/parameters/PumpId"},
        ),
        "components.parameters.Again: a cycle of $refs",
    ),
    (
        "duplicate-name",
        lambda s: _op(s, "/version", "get").update(operationId="set_speed"),
        "paths./version.get: operation name 'set_speed' is also "
        "paths./pumps/{id}/speed.post's: names are unique",
    ),
    (
        "matrix-style",
        lambda s: s["components"]["parameters"]["PumpId"].update(style="matrix"),
        "components.parameters.PumpId.style: 'matrix' is not supported here (simple)",
    ),
    (
        "cookie",
        lambda s: _op(s, "/version", "get").update(
            parameters=[{"name": "sid", "in": "cookie", "schema": {"type": "string"}}]
        ),
        "paths./version.get.parameters.0.in: cookie parameters are not supported "
        "(path, query and header are)",
    ),
    (
        "bad-schema",
        lambda s: s["components"]["schemas"]["Ramp"].update(type="numbr"),
        "components.schemas.Ramp.type: 'numbr' is not valid under any of the given schemas",
    ),
    (
        "path-mismatch",
        lambda s: s["paths"].update({"/pumps/{pump}/stop": s["paths"].pop("/pumps/{id}/speed")}),
        "paths./pumps/{pump}/stop.post: the path has {pump} but no path parameter 'pump'",
    ),
    (
        "form-body",
        lambda s: s["components"]["requestBodies"]["Speed"].update(
            content={"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
        ),
        "components.requestBodies.Speed: no application/json content "
        "(it takes application/x-www-form-urlencoded): not supported",
    ),
    (
        "framing-header",
        lambda s: _op(s, "/version", "get").update(
            parameters=[{"name": "Content-Length", "in": "header", "schema": {"type": "integer"}}]
        ),
        "paths./version.get.parameters.0.name: header 'Content-Length' frames the request: "
        "not a parameter",
    ),
    (
        "body-param-name",
        lambda s: _op(s, "/pumps/{id}/speed", "post").update(
            parameters=[{"name": "body", "in": "query", "schema": {"type": "string"}}]
        ),
        f"{SPEED}.parameters.0: parameter 'body' has the body's param name: set `body_param` "
        "to another",
    ),
    (
        "swagger",
        lambda s: (s.pop("openapi"), s.update(swagger="2.0")),
        "swagger: a Swagger 2.0 document, not OpenAPI 3.0/3.1",
    ),
    ("not-openapi", lambda s: s.update(openapi="4.0.0"), "openapi: '4.0.0': not an OpenAPI 3.0"),
    (
        "no-tools",
        lambda s: [
            (op.pop("operationId", None), op.pop("x-tool-name", None))
            for p in s["paths"].values()
            for op in p.values()
            if isinstance(op, dict)
        ],
        "paths: no operation has an operationId or x-tool-name",
    ),
]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize(("change", "error"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_spec_is_one_line_naming_the_place(
    tmp_path: Path, suffix: str, change: Callable[[dict[str, Any]], object], error: str
) -> None:
    spec = write_spec(tmp_path / f"pump{suffix}", edited(change))
    errors = load_errors(conf_text(spec))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"actuators.pump: `spec` {spec}: {error}"), errors[0]


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**PUMP_SPEC, "x-pad": "x" * 4096}))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo, 0o600)
    badyaml = tmp_path / "bad.yaml"
    badyaml.write_text("openapi: 3.0.3\npaths: {\n  /a: [\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text("openapi: 3.0.3\nopenapi: 3.1.0\npaths: {}\n")
    cases = {
        missing: "no such file",
        tmp_path: "not a regular file",
        fifo: "not a regular file",
        big: "bytes, more than max_spec_bytes (4096)",
        badyaml: "not valid YAML: ",
        dup: "not valid YAML: duplicate key 'openapi' (line 2, column 1)",
    }
    for path, error in cases.items():
        errors = load_errors(conf_text(path, "max_spec_bytes = 4096\n"))
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"actuators.pump: `spec` {path}: "), errors[0]
        assert error in errors[0], errors[0]
    assert load_errors(conf_text("pump.yaml")) == [
        "actuators.pump: `spec`: 'pump.yaml' is not an absolute path"
    ]
    assert load_errors(conf_text(missing, 'operations = ["x"]\n'))[0].endswith("no such file")


def test_the_allow_list_names_operations_of_the_spec(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "pump.json")
    assert load_errors(conf_text(spec, 'operations = ["get_pump", "set_sped"]\n')) == [
        f"actuators.pump: `spec` {spec}: operations[1]: 'set_sped': no such operation "
        "(did you mean 'set_speed'?)"
    ]
    # an operation left out is not compiled: its problems do not matter
    broken = edited(
        lambda s: _op(s, "/version", "get").update(parameters=[{"name": "sid", "in": "cookie"}])
    )
    spec = write_spec(tmp_path / "pump2.json", broken)
    assert load_errors(conf_text(spec, 'operations = ["get_pump"]\n')) == []


def test_a_parameter_cannot_set_a_configured_header(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "pump.json")
    assert load_errors(conf_text(spec, 'headers = { "x-trace" = "on" }\n')) == [
        f"actuators.pump: `spec` {spec}: paths./pumps/{{id}}.get.parameters.2.name: "
        "header 'X-Trace' is set by the config: not a parameter"
    ]
    renamed = conf_text(spec, 'body_param = "speed"\n')
    conf = cfg.loads(renamed, default_registry).actuators["pump"].config
    assert conf.needs("set_speed") == {"id", "speed"}  # type: ignore[attr-defined]


def test_yaml_12_scalars_stay_what_was_written(tmp_path: Path) -> None:
    text = yaml.safe_dump(PUMP_SPEC)
    # YAML 1.1 would read these as 80, a date and True
    text = text.replace(
        "    Ramp:\n", "    Ramp:\n      example: 1:20\n      x-since: 2024-01-01\n"
    )
    text = text.replace(
        "      properties:\n        note:",
        "      properties:\n        on: {type: boolean}\n        note:",
    )
    assert text.count("1:20") == 1
    assert text.count("on: {type") == 1
    spec = tmp_path / "pump.yaml"
    spec.write_text(text)
    conf = cfg.loads(conf_text(spec), default_registry).actuators["pump"].config
    schemas = conf.action_schemas()  # type: ignore[attr-defined]
    ramp = schemas["set_speed"]["$defs"]["Ramp"]
    assert (ramp["example"], ramp["x-since"]) == ("1:20", "2024-01-01")
    assert "on" in schemas["set_speed"]["$defs"]["Speed"]["properties"]


def run_agentd(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "agentd", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_check_config_and_run_refuse_a_broken_spec(tmp_path: Path) -> None:
    good = write_spec(tmp_path / "pump.yaml")
    remote = write_spec(tmp_path / "remote.json", edited(BROKEN[0][1]))
    text = conf_text(good) + conf_text(remote, name="remote").replace("[sensors.system]\n", "")
    text += (
        '[policies.hot]\nplugin = "threshold"\nmetric = "system.cpu.percent"\nabove = 99.0\n'
        'actuator = "pump"\naction = "set_sped"\n'
    )
    conf = tmp_path / "agentd.toml"
    conf.write_text(text)
    out = run_agentd("check-config", str(conf))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"actuators.remote: `spec` {remote}: components.requestBodies.Speed.content."
        "application/json.schema.$ref: 'other.yaml#/Speed' is a remote reference "
        "(only local '#/...' ones are supported)"
    ]
    assert "Traceback" not in out.stderr
    run = run_agentd("run", "--config", str(conf), "--state-dir", str(tmp_path / "s"))
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1].startswith(
        f"agentd: bad config: actuators.remote: `spec` {remote}: "
    )
    # the good one alone: the policy's action is checked against the spec's operations
    conf.write_text(
        text.replace(conf_text(remote, name="remote").replace("[sensors.system]\n", ""), "")
    )
    out = run_agentd("check-config", str(conf))
    assert out.stderr.splitlines() == [
        "policies.hot.action: actuator 'pump' has no action 'set_sped' (did you mean "
        "'set_speed'?) (offers: big, echo, get_pump, set_speed, version)"
    ]
    conf.write_text(conf.read_text().replace('"set_sped"', '"set_speed"'))
    out = run_agentd("check-config", str(conf))
    assert out.stderr.splitlines() == [
        "policies.hot.params: this policy adds metric, threshold, value to the params it "
        "sends, which actuator 'pump' action 'set_speed' does not accept (it takes: body, id); "
        "use a `rules` policy",
        "policies.hot.params: actuator 'pump' action 'set_speed' needs {body}, {id}, which "
        "'hot' does not send",
    ]


def test_agentd_schema_shows_an_instances_actions(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "pump.json")
    conf = tmp_path / "agentd.toml"
    conf.write_text(
        conf_text(spec)
        + '[actuators.webhook]\nurl = "http://127.0.0.1:9/h"\n'
        + '[actuators.bump]\nplugin = "exec"\n'
        + 'commands = { go = ["/bin/true"], stop = ["/bin/false"] }\n'
    )
    out = run_agentd("schema", "--config", str(conf), "actuator:pump")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["instance"], doc["plugin"], doc["kind"]) == ("pump", "openapi", "actuator")
    assert sorted(doc["actions"]) == ["big", "echo", "get_pump", "set_speed", "version"]
    speed = doc["actions"]["set_speed"]
    assert speed["required"] == ["id", "body"]
    assert speed["additionalProperties"] is False
    assert speed["properties"]["body"] == {"$ref": "#/$defs/Speed"}
    assert speed["$defs"]["Speed"]["properties"]["rpm"] == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMaximum": 3000,
    }
    assert speed["$defs"]["Speed"]["properties"]["note"] == {"type": ["string", "null"]}
    assert speed["properties"]["id"]["description"] == "the pump's name on the controller"
    assert doc["config"]["properties"]["spec"] == {"type": "string"}
    # an instance named like a plugin wins (its document is the plugin's, plus the instance)
    hook = json.loads(run_agentd("schema", "-c", str(conf), "actuator:webhook").stdout)
    assert (hook["instance"], hook["plugin"]) == ("webhook", "webhook")
    # an actuator whose actions come from its config (offers()) but has no schemas of its own
    bump = json.loads(run_agentd("schema", "-c", str(conf), "actuator:bump").stdout)
    assert sorted(bump["actions"]) == ["go", "stop"]
    assert bump["actions"]["go"]["$ref"] == "#/$defs/ExecParams"
    # a bare name is always the plugin, without reading a config
    plugin = json.loads(run_agentd("schema", "openapi").stdout)
    assert "instance" not in plugin
    assert plugin["actions"]["*"]["$ref"] == "#/$defs/AnyParams"
    missing = run_agentd("schema", "-c", str(conf), "actuator:pumpp")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (
        f"agentd: no actuator named 'pumpp' in {conf}, nor a plugin (see `agentd plugins`)\n"
    )
    broken = run_agentd("schema", "-c", str(tmp_path / "nope.toml"), "actuator:pump")
    assert broken.returncode == 1
    assert broken.stderr.count("\n") == 1, broken.stderr


def test_yaml_and_jsonschema_are_imported_only_for_an_openapi_actuator(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text('[sensors.system]\n[actuators.hook]\nplugin = "webhook"\nurl = "http://h/"\n')
    json_spec = tmp_path / "with-json.toml"
    json_spec.write_text(conf_text(write_spec(tmp_path / "pump.json")))
    yaml_spec = tmp_path / "with-yaml.toml"
    yaml_spec.write_text(conf_text(write_spec(tmp_path / "pump.yaml")))
    code = (
        "import sys\n"
        "import agentd.plugins.builtin\n"
        "assert 'yaml' not in sys.modules and 'jsonschema' not in sys.modules\n"
        "from agentd.cli.agentd import main\n"
        "assert main(['check-config', sys.argv[1]]) == 0\n"
        "print(sorted(m for m in ('yaml', 'jsonschema') if m in sys.modules))\n"
    )
    seen = {}
    for conf in (plain, json_spec, yaml_spec):
        out = subprocess.run(
            [PY, "-c", code, str(conf)], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
        seen[conf.name] = out.stdout.splitlines()[-1]
    assert seen == {
        "plain.toml": "[]",
        "with-json.toml": "['jsonschema']",
        "with-yaml.toml": "['jsonschema', 'yaml']",
    }


def test_a_reload_of_the_same_document_does_not_compile_it_again(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "pump.yaml")
    text = conf_text(spec)

    def compiled() -> Any:
        return cfg.loads(text, default_registry).actuators["pump"].config.compiled  # type: ignore[attr-defined]

    first = compiled()
    assert compiled() is first  # the same bytes: the compiled form is reused
    write_spec(spec, edited(lambda s: _op(s, "/version", "get").update(operationId="about")))
    changed = compiled()
    assert changed is not first
    assert "about" in changed.operations
    assert "version" not in changed.operations
    write_spec(spec, edited(BROKEN[0][1]))
    assert len(load_errors(text)) == 1  # a broken document is never served from the cache


async def test_a_reload_rebuilds_the_actuator_when_only_its_document_changed(
    tmp_path: Path,
) -> None:
    from agentd.plugins.supervisor import PluginSupervisor

    spec = write_spec(tmp_path / "pump.yaml")
    text = conf_text(spec)
    registry = default_registry()
    sup = PluginSupervisor(registry)
    await sup.start_all(cfg.loads(text, registry))
    try:
        first = sup.actuators()["pump"]
        async with sup.lock:  # the table and the document as they were: the same actuator
            sup.commit(await sup.rebuild(cfg.loads(text, registry)))
        assert sup.actuators()["pump"] is first
        # the operator edits the document in place, then reloads (the table is unchanged)
        write_spec(spec, edited(lambda s: _op(s, "/version", "get").update(operationId="about")))
        async with sup.lock:
            retired = sup.commit(await sup.rebuild(cfg.loads(text, registry)))
        rebuilt = sup.actuators()["pump"]
        assert rebuilt is not first
        assert retired == [first]
        assert "about" in rebuilt.instance.config.offers()  # type: ignore[attr-defined]
        await sup.stop_all(1.0, retired)
    finally:
        await sup.stop_all(1.0)
