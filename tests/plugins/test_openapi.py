"""The `openapi` actuator against a real HTTP server on 127.0.0.1 that implements a small pump
controller spec (written as YAML and as JSON): valid calls reach it with the right method, path,
query, headers and body; invalid params and path injections are refused before any request (the
server saw nothing); a header read from a file reaches it and never appears in an error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from agentd.model import Action
from agentd.plugins.builtin import openapi
from tests.plugins.conftest import serving
from tests.plugins.test_actuators import Server
from tests.plugins.test_hardening import actuator

_OK = {"200": {"description": "ok"}}

PUMP_SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Pump controller", "version": "1.2"},
    "servers": [{"url": "http://pump.example/api"}],
    "paths": {
        "/pumps/{id}": {
            "parameters": [{"$ref": "#/components/parameters/PumpId"}],
            "get": {
                "operationId": "getPump",
                "x-tool-name": "get_pump",
                "summary": "Read a pump",
                "parameters": [
                    {
                        "name": "unit",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["rpm", "percent"]},
                    },
                    {
                        "name": "fields",
                        "in": "query",
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": _OK,
            },
        },
        "/pumps/{id}/speed": {
            "parameters": [{"$ref": "#/components/parameters/PumpId"}],
            "post": {
                "operationId": "set_speed",
                "requestBody": {"$ref": "#/components/requestBodies/Speed"},
                "responses": _OK,
            },
        },
        "/version": {"get": {"operationId": "version", "responses": _OK}},
        "/echo": {
            "get": {
                "operationId": "echo",
                "parameters": [{"name": "status", "in": "query", "schema": {"type": "integer"}}],
                "responses": _OK,
            }
        },
        "/big": {"get": {"operationId": "big", "responses": _OK}},
        "/health": {"get": {"responses": _OK}},  # no operationId: not an action
    },
    "components": {
        "parameters": {
            "PumpId": {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "the pump's name on the controller",
                "schema": {"type": "string", "minLength": 1, "maxLength": 64},
            }
        },
        "requestBodies": {
            "Speed": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Speed"}}},
            }
        },
        "schemas": {
            "Speed": {
                "type": "object",
                "required": ["rpm"],
                "additionalProperties": False,
                "properties": {
                    "rpm": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 3000,
                        "exclusiveMaximum": True,
                    },
                    "ramp": {"$ref": "#/components/schemas/Ramp"},
                    "note": {"type": "string", "nullable": True},
                },
            },
            "Ramp": {"type": "number", "minimum": 0},
        },
    },
}


def write_spec(path: Path, spec: dict[str, Any] | None = None) -> Path:
    """The spec as YAML or JSON, by the file's suffix."""
    doc = PUMP_SPEC if spec is None else spec
    text = json.dumps(doc, indent=1) if path.suffix == ".json" else yaml.safe_dump(doc)
    path.write_text(text)
    return path


class PumpServer(Server):
    """The pump controller of PUMP_SPEC under /api (a real HTTP/1.1 server)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for h in lines[1:]:
                if h:
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((lines[0], headers, body))
            method, target, _ = lines[0].split(" ", 2)
            status, media, reply = self.route(method, target, head, body)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {media}\r\n"
                f"Content-Length: {len(reply)}\r\n\r\n".encode()
                + reply
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    def route(method: str, target: str, head: bytes, body: bytes) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        query = parse_qs(url.query)
        parts = url.path.split("/")  # ['', 'api', ...]
        js = "application/json"
        if method == "GET" and len(parts) == 4 and parts[2] == "pumps":
            pump = unquote(parts[3])
            if pump == "missing":
                return 404, "text/plain", b"<h1>Not found</h1> no pump missing"
            unit = query.get("unit", ["rpm"])[0]
            return 200, js, json.dumps({"id": pump, "rpm": 1200, "unit": unit}).encode()
        if method == "POST" and len(parts) == 5 and parts[4] == "speed":
            doc = {"id": unquote(parts[3]), "set": json.loads(body)}
            return 200, f"{js}; charset=utf-8", json.dumps(doc).encode()
        if url.path == "/api/version":
            return 200, "text/plain", b"pumpctl 1.2"
        if url.path == "/api/echo":  # the auth header first, as a careless server would
            auth = [h for h in head.split(b"\r\n") if h.lower().startswith(b"authorization")]
            return int(query.get("status", ["200"])[0]), "text/plain", b"\n".join([*auth, head])
        if url.path == "/api/big":
            return 200, js, json.dumps({"rows": list(range(5000))}).encode()
        return 404, "text/plain", b"no route"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


@pytest.fixture
async def pump() -> Any:
    async with serving(PumpServer()) as srv:
        yield srv


@pytest.fixture(params=["yaml", "json"])
def spec_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_spec(tmp_path / f"pump.{request.param}")


def call(name: str, **params: Any) -> Action:
    return Action(actuator="a", name=name, params=params)


async def test_valid_calls_reach_the_server_with_the_right_shape(
    pump: PumpServer, spec_file: Path
) -> None:
    r, h = actuator(openapi, spec=str(spec_file), base_url=pump.base + "/")
    await h.start()
    res = await r.run(
        call("get_pump", id="pump #1", unit="percent", fields=["a b", "c"], **{"X-Trace": "t-9"})
    )
    assert res.status == "ok", res.error
    assert res.output == {"status": 200, "body": {"id": "pump #1", "rpm": 1200, "unit": "percent"}}
    line, headers, body = pump.requests[-1]
    assert line == "GET /api/pumps/pump%20%231?unit=percent&fields=a%20b&fields=c HTTP/1.1"
    assert headers["x-trace"] == "t-9"
    assert "content-type" not in headers
    assert body == b""

    res = await r.run(call("set_speed", id="p2", body={"rpm": 1500, "ramp": 2.5, "note": None}))
    assert res.status == "ok", res.error
    assert res.output == {
        "status": 200,
        "body": {"id": "p2", "set": {"rpm": 1500, "ramp": 2.5, "note": None}},
    }
    line, headers, body = pump.requests[-1]
    assert line == "POST /api/pumps/p2/speed HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"rpm": 1500, "ramp": 2.5, "note": None}

    res = await r.run(call("version"))
    assert (res.status, res.output) == ("ok", {"status": 200, "body": "pumpctl 1.2"})
    assert pump.requests[-1][0] == "GET /api/version HTTP/1.1"
    assert len(pump.requests) == 3


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (call("get_pump"), "get_pump.params: 'id' is a required property"),
        (call("get_pump", id="p1", unit="rps"), "get_pump.params.unit: 'rps' is not one of"),
        (call("get_pump", id="p1", colour="red"), "get_pump.params: Additional properties"),
        (call("get_pump", id=""), "get_pump.params.id: '' should be non-empty"),
        (call("set_speed", id="p1"), "set_speed.params: 'body' is a required property"),
        # OpenAPI 3.0's boolean exclusiveMaximum: 3000 itself is out
        (call("set_speed", id="p1", body={"rpm": 3000}), "set_speed.params.body.rpm: 3000 is"),
        (call("set_speed", id="p1", body={"rpm": "fast"}), "set_speed.params.body.rpm: 'fast' is"),
        (call("set_speed", id="p1", body={"rpm": 1, "ramp": -1}), "set_speed.params.body.ramp"),
        (call("set_speed", id="p1", body={"rpm": 1, "x": 1}), "set_speed.params.body: Addition"),
        (call("get_pump", id="p1", **{"X-Trace": "a\r\nHost: evil"}), "get_pump.params.X-Trace"),
        (call("health"), "no operation 'health' in the spec (offers: big, echo, get_pump, set_"),
    ],
)
async def test_invalid_params_are_rejected_before_any_request(
    pump: PumpServer, spec_file: Path, action: Action, error: str
) -> None:
    r, _ = actuator(openapi, spec=str(spec_file), base_url=pump.base)
    res = await r.run(action)
    assert res.status == "rejected", res
    assert str(res.error).startswith(f"actuator 'a': {error}"), res.error
    assert "\n" not in str(res.error)
    assert pump.requests == []


@pytest.mark.parametrize("pump_id", ["..", ".", "../admin", "a/b", "/etc", "a\\b", "x\ty", "p\x00"])
async def test_a_path_param_cannot_steer_the_path(
    pump: PumpServer, spec_file: Path, pump_id: str
) -> None:
    r, _ = actuator(openapi, spec=str(spec_file), base_url=pump.base)
    res = await r.run(call("get_pump", id=pump_id))
    assert res.status == "rejected", res
    assert str(res.error).startswith("actuator 'a': get_pump.params.id: "), res.error
    assert "cannot be a path segment" in str(res.error)
    assert pump.requests == []


async def test_encoded_dots_stay_inside_the_segment(pump: PumpServer, spec_file: Path) -> None:
    r, _ = actuator(openapi, spec=str(spec_file), base_url=pump.base)
    res = await r.run(call("get_pump", id="%2e%2e"))
    assert res.status == "ok", res.error
    assert pump.requests[-1][0] == "GET /api/pumps/%252e%252e HTTP/1.1"
    assert res.output["body"]["id"] == "%2e%2e"


async def test_a_header_from_a_file_is_sent_and_never_quoted(
    pump: PumpServer, spec_file: Path, tmp_path: Path
) -> None:
    token = tmp_path / "pump.token"
    token.write_text("Bearer pump-s3cret-0123456789\n")
    token.chmod(0o600)
    r, h = actuator(
        openapi,
        spec=str(spec_file),
        base_url=pump.base,
        header_files={"Authorization": str(token)},
        retries=0,
    )
    await h.start()
    ok = await r.run(call("echo"))
    assert ok.status == "ok", ok.error
    assert pump.requests[-1][1]["authorization"] == "Bearer pump-s3cret-0123456789"
    # the server echoes the request head: the journalled body has the secret taken out
    assert "pump-s3cret" not in json.dumps(ok.output)
    assert "Authorization: <redacted>" in ok.output["body"]
    bad = await r.run(call("echo", status=401))
    assert bad.status == "failed"
    assert str(bad.error).startswith(
        "HTTPError: GET /echo answered 401: Authorization: <redacted> GET /api/echo?status=401"
    )
    assert "pump-s3cret" not in str(bad.error)
    assert len(str(bad.error)) < 200


async def test_a_non_2xx_answer_fails_with_its_status_and_an_excerpt(
    pump: PumpServer, spec_file: Path
) -> None:
    r, _ = actuator(openapi, spec=str(spec_file), base_url=pump.base, retries=1, backoff=0.01)
    res = await r.run(call("get_pump", id="missing"))
    assert res.status == "failed"
    assert res.attempts == 2  # the common retries apply
    assert res.error == "HTTPError: GET /pumps/missing answered 404: Not found no pump missing"


async def test_the_response_is_bounded(pump: PumpServer, spec_file: Path) -> None:
    r, _ = actuator(openapi, spec=str(spec_file), base_url=pump.base, max_response=100)
    res = await r.run(call("big"))
    assert res.status == "ok", res.error
    assert res.output["truncated"] is True
    assert res.output["body"] == json.dumps({"rows": list(range(5000))})[:100]
    r, _ = actuator(openapi, spec=str(spec_file), base_url=pump.base)
    whole = await r.run(call("big"))
    assert whole.output["body"]["rows"][-1] == 4999
    assert "truncated" not in whole.output


async def test_no_answer_within_the_timeout(spec_file: Path) -> None:
    done = asyncio.Event()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await done.wait()  # never answers
        writer.close()
        closed.set()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        r, _ = actuator(
            openapi, spec=str(spec_file), base_url=f"http://127.0.0.1:{port}", request_timeout=0.2
        )
        res = await r.run(call("version"))
    finally:
        done.set()
        await asyncio.wait_for(closed.wait(), 5)
        srv.close()
        await srv.wait_closed()
    assert res.status == "timeout", res
    assert f"no answer from http://127.0.0.1:{port} within 0.2s" in str(res.error)


async def test_openapi_31_schemas_and_the_allow_list(pump: PumpServer, tmp_path: Path) -> None:
    spec = json.loads(json.dumps(PUMP_SPEC))
    spec["openapi"] = "3.1.0"
    speed = spec["components"]["schemas"]["Speed"]["properties"]
    speed["rpm"] = {"type": "integer", "exclusiveMaximum": 3000, "minimum": 0}
    speed["note"] = {"type": ["string", "null"]}
    path = write_spec(tmp_path / "pump31.yml", spec)
    r, _ = actuator(
        openapi, spec=str(path), base_url=pump.base, operations=["set_speed", "get_pump"]
    )
    ok = await r.run(call("set_speed", id="p1", body={"rpm": 2999, "note": None}))
    assert ok.status == "ok", ok.error
    bad = await r.run(call("set_speed", id="p1", body={"rpm": 3000}))
    assert bad.status == "rejected"
    off = await r.run(call("version"))
    assert str(off.error).startswith("actuator 'a': no operation 'version' in the spec")
    conf = r.actuators["a"].obj.config
    assert isinstance(conf, openapi.OpenAPIConfig)
    assert conf.offers() == ["get_pump", "set_speed"]
    assert conf.needs("set_speed") == {"id", "body"}


async def test_the_templates_own_text_is_encoded_as_a_path(
    pump: PumpServer, tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(PUMP_SPEC))
    spec["paths"]["/pump list/{id}"] = spec["paths"].pop("/pumps/{id}")
    path = write_spec(tmp_path / "spaced.json", spec)
    r, _ = actuator(openapi, spec=str(path), base_url=pump.base, retries=0)
    res = await r.run(call("get_pump", id="p1"))
    assert res.status == "failed"  # the server has no such route
    assert pump.requests[-1][0] == "GET /api/pump%20list/p1 HTTP/1.1"


async def test_a_recursive_schema_is_validated_through_its_defs(
    pump: PumpServer, tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(PUMP_SPEC))
    schemas = spec["components"]["schemas"]
    schemas["Step"] = {
        "type": "object",
        "required": ["rpm"],
        "properties": {
            "rpm": {"type": "integer"},
            "then": {"$ref": "#/components/schemas/Step"},
        },
    }
    schemas["Speed"]["properties"]["program"] = {"$ref": "#/components/schemas/Step"}
    path = write_spec(tmp_path / "program.yaml", spec)
    r, _ = actuator(openapi, spec=str(path), base_url=pump.base)
    deep = {"rpm": 1, "then": {"rpm": 2, "then": {"rpm": 3}}}
    ok = await r.run(call("set_speed", id="p1", body={"rpm": 1, "program": deep}))
    assert ok.status == "ok", ok.error
    bad = {"rpm": 1, "then": {"rpm": 2, "then": {"rpm": "three"}}}
    res = await r.run(call("set_speed", id="p1", body={"rpm": 1, "program": bad}))
    assert res.status == "rejected"
    assert str(res.error).startswith(
        "actuator 'a': set_speed.params.body.program.then.then.rpm: 'three' is not of type"
    )
    schema = r.actuators["a"].obj.config.action_schemas()["set_speed"]
    assert sorted(schema["$defs"]) == ["Ramp", "Speed", "Step"]
    assert schema["$defs"]["Step"]["properties"]["then"] == {"$ref": "#/$defs/Step"}


async def test_a_required_read_only_property_is_not_asked_for(
    pump: PumpServer, tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(PUMP_SPEC))
    speed = spec["components"]["schemas"]["Speed"]
    speed["properties"]["serial"] = {"type": "string", "readOnly": True}
    speed["required"] = ["rpm", "serial"]
    path = write_spec(tmp_path / "readonly.json", spec)
    r, _ = actuator(openapi, spec=str(path), base_url=pump.base)
    res = await r.run(call("set_speed", id="p1", body={"rpm": 10}))
    assert res.status == "ok", res.error
    missing = await r.run(call("set_speed", id="p1", body={"serial": "x"}))
    assert str(missing.error).endswith("set_speed.params.body: 'rpm' is a required property")
