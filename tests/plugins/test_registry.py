"""The registry: validation at registration, entry points from real (on-disk) distributions,
blocking, `agentd plugins`, `agentd schema`, and check-config's one-line errors per plugin key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agentd.errors import PluginError
from agentd.model import Action
from agentd.plugins.base import PluginSpec
from agentd.plugins.registry import Registry, default_registry
from tests.utils import AgentProcess

AGENTD = [sys.executable, "-m", "agentd"]


class Conf(msgspec.Struct):
    pass


class Params(msgspec.Struct):
    n: int


class GoodSensor:
    def __init__(self, config: Conf) -> None: ...

    async def perceive(self) -> dict[str, float]:
        return {}


class SyncSensor:
    def perceive(self) -> dict[str, float]:
        return {}


class NotAnActuator:
    async def run(self, action: Action) -> None: ...


def spec(**kw: object) -> PluginSpec:
    base: dict[str, object] = {
        "name": "thing",
        "kind": "sensor",
        "factory": GoodSensor,
        "config_type": Conf,
        "origin": "acme-agentd==2.1",
    }
    base.update(kw)
    return PluginSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"name": "system"},
            "plugin 'system' (acme-agentd==2.1): duplicate sensor plugin name "
            "(already from builtin)",
        ),
        (
            {"factory": SyncSensor},
            "plugin 'thing' (acme-agentd==2.1): SyncSensor.perceive() must "
            "be `async def` (the sensor protocol)",
        ),
        (
            {"kind": "actuator", "factory": NotAnActuator, "actions": {"go": Params}},
            "plugin 'thing' (acme-agentd==2.1): NotAnActuator does not satisfy the actuator "
            "protocol (no act() method)",
        ),
        (
            {"config_type": dict},
            "plugin 'thing' (acme-agentd==2.1): config_type is not a msgspec.Struct",
        ),
        (
            {"kind": "actuator", "factory": lambda c: None},
            "plugin 'thing' (acme-agentd==2.1): an actuator must declare at least one action",
        ),
        (
            {"kind": "actuator", "factory": lambda c: None, "actions": {"go": int}},
            "plugin 'thing' (acme-agentd==2.1): params of action 'go' is not a Struct",
        ),
        (
            {"requires": ("daemon",)},
            "plugin 'thing' (acme-agentd==2.1): requires unknown "
            "capability 'daemon' (known: sessions)",
        ),
        (
            {"name": "bad name"},
            "plugin 'bad name' (acme-agentd==2.1): plugin names use letters, digits, '_' and '-'",
        ),
        ({"kind": "gadget"}, "plugin 'thing' (acme-agentd==2.1): unknown kind 'gadget'"),
    ],
)
def test_registration_is_validated(kw: dict[str, object], message: str) -> None:
    registry = default_registry(entry_points=False)
    with pytest.raises(PluginError) as err:
        registry.register(spec(**kw))
    assert str(err.value) == message


def test_same_name_different_kinds_and_blocking() -> None:
    registry = default_registry(entry_points=False)
    assert registry.get("file", "sensor").kind == "sensor"
    assert registry.get("file", "actuator").kind == "actuator"
    assert [s.kind for s in registry.find_all("file")] == ["sensor", "actuator"]
    blocked = Registry(blocked=["exec"])
    from agentd.plugins.builtin import BUILTINS

    for s in BUILTINS:
        blocked.register(s)
    assert blocked.find("exec") is None
    assert "exec" not in blocked.names("actuator")
    with pytest.raises(PluginError, match=r"plugin 'exec' \(builtin\): is blocked by config"):
        blocked.get("exec")


def make_dist(site: Path, name: str, version: str, entry: str, module: str, code: str) -> None:
    """A real installed distribution (dist-info with entry points) on a path entry."""
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[agentd.plugins]\n{entry}\n")
    (site / f"{module}.py").write_text(code)


@pytest.fixture
def broken_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    make_dist(
        site,
        "broken-plugin",
        "0.3",
        "broken = broken_mod:SPEC",
        "broken_mod",
        "import no_such_module_xyz\n",
    )
    make_dist(
        site,
        "wrong-plugin",
        "1.0",
        "wrong = wrong_mod:SPEC",
        "wrong_mod",
        "SPEC = 'not a spec'\n",
    )
    marker = tmp_path / "imported"
    make_dist(
        site,
        "blockme-plugin",
        "2.0",
        "blockme = blockme_mod:SPEC",
        "blockme_mod",
        f"open({str(marker)!r}, 'w').write('x')\nraise RuntimeError('should not be imported')\n",
    )
    return site


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.getcwd()}"}


def test_broken_plugins_are_reported_in_one_line_and_skipped(broken_site: Path) -> None:
    out = subprocess.run(
        [*AGENTD, "plugins", "--json"],
        env=env_with(broken_site),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    problems = sorted(doc["problems"])
    assert problems[0] == (
        "plugin 'blockme' (blockme-plugin==2.0): cannot load blockme_mod:SPEC: "
        "RuntimeError: should not be imported"
    )
    assert problems[1] == (
        "plugin 'broken' (broken-plugin==0.3): cannot load broken_mod:SPEC: "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )
    assert problems[2] == (
        "plugin 'wrong' (wrong-plugin==1.0): entry point wrong_mod:SPEC gave a str, "
        "not a PluginSpec"
    )
    assert "system" in {p["name"] for p in doc["plugins"]}  # the rest still loads
    table = subprocess.run(
        [*AGENTD, "plugins"],
        env=env_with(broken_site),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "skipped: plugin 'broken' (broken-plugin==0.3)" in table.stderr
    assert all(len(line) < 300 for line in table.stderr.splitlines())


def test_config_using_a_plugin_that_failed_to_load_says_why(
    broken_site: Path, tmp_path: Path
) -> None:
    path = tmp_path / "agentd.toml"
    path.write_text("[sensors.b]\nplugin = 'broken'\n")
    out = subprocess.run(
        [*AGENTD, "check-config", str(path)],
        env=env_with(broken_site),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "sensors.b.plugin: plugin 'broken' (broken-plugin==0.3): cannot load broken_mod:SPEC: "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )


def test_a_blocked_plugin_is_not_imported(
    broken_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(broken_site))
    registry = Registry(blocked=["blockme", "broken"])
    registry.load_entry_points()
    assert not (tmp_path / "imported").exists()
    assert [p.split(" (")[0] for p in registry.problems] == ["plugin 'wrong'"]


def test_daemon_starts_despite_a_broken_plugin(broken_site: Path, short_tmp: Path) -> None:
    cfg = (
        "[agent]\ninterval = 0.1\n[store]\nenabled = false\n[control]\nenabled = false\n"
        "[plugins]\nblocked = ['blockme']\n[sensors.system]\ncpu = false\n"
    )
    with AgentProcess(short_tmp, cfg, env=env_with(broken_site)) as agent:
        agent.wait_log(
            r"plugin skipped: plugin 'broken' \(broken-plugin==0\.3\): cannot load "
            r"broken_mod:SPEC: ModuleNotFoundError"
        )
        agent.wait_log(r"tick 2: ")
        assert agent.stop() == 0
    assert "should not be imported" not in agent.log()
    assert "plugin 'blockme' (blockme-plugin==2.0) is blocked by config: not loaded" in agent.log()


def test_schema_whole_config_and_one_plugin_with_action_params() -> None:
    def schema(*args: str) -> dict:  # type: ignore[type-arg]
        out = subprocess.run(
            [*AGENTD, "schema", *args], capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(out.stdout)

    whole = schema()
    variants = whole["properties"]["actuators"]["additionalProperties"]["anyOf"]
    titles = {v["title"] for v in variants}
    assert {
        "actuator plugin 'exec'",
        "actuator plugin 'webhook'",
        "actuator plugin 'session'",
    } <= titles
    exec_doc = schema("exec")
    assert exec_doc["idempotent"] is False
    props = exec_doc["config"]["properties"]
    assert {"commands", "run_timeout", "limits", "retries", "retry_on", "startup_error"} <= set(
        props
    )
    assert set(props["startup_error"]["enum"]) == {"fail", "skip", "retry"}
    session_doc = schema("session")
    assert session_doc["requires"] == ["sessions"]
    put = session_doc["actions"]["put"]
    put_props = put["$defs"][put["$ref"].rsplit("/", 1)[-1]]
    assert set(put_props["required"]) == {"session", "value"}
    both = schema("file")
    assert [v["kind"] for v in both["variants"]] == ["sensor", "actuator"]
    assert schema("actuator:file")["actions"]["write"]
    missing = subprocess.run(
        [*AGENTD, "schema", "nosuch"], capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == "agentd: no plugin named 'nosuch' (see `agentd plugins`)"


BAD = {
    "file_sensor_scale": (
        "[sensors.t]\nplugin = 'file'\npath = '/x'\nscale = 'big'\n",
        'sensors.t.scale: expected a number, got "big"',
    ),
    "file_sensor_regex": (
        "[sensors.t]\nplugin = 'file'\npath = '/x'\nregex = '(('\n",
        "sensors.t: `regex` is not a valid regular expression: missing ), unterminated subpattern "
        "at position 1",
    ),
    "command_argv": (
        "[sensors.c]\nplugin = 'command'\nargv = []\n",
        "sensors.c.argv: expected an array of length >= 1, got []",
    ),
    "command_parse": (
        "[sensors.c]\nplugin = 'command'\nargv = ['/bin/true']\nparse = 'xml'\n",
        "sensors.c.parse: Invalid enum value 'xml'",
    ),
    "net_unknown": (
        "[sensors.system]\n[sensors.n]\nplugin = 'net'\ninterface = 'eth0'\n",
        "sensors.n.interface: unknown key",
    ),
    "process_empty": (
        "[sensors.system]\n[sensors.p]\nplugin = 'process'\nprocesses = {}\n",
        "sensors.p.processes: expected a table of length >= 1, got {}",
    ),
    "rules_op": (
        "[sensors.system]\n[policies.r]\nplugin = 'rules'\n"
        "conditions = [{ metric = 'system.load.1m', op = '=>', value = 1 }]\n[actuators.log]\n",
        "policies.r.conditions[0].op: Invalid enum value '=>'",
    ),
    "rate_both": (
        "[sensors.system]\n[policies.r]\nplugin = 'rate'\nmetric = 'a.b'\nabove = 1\n"
        "below = 2\n[actuators.log]\n",
        "policies.r: set exactly one of `above` or `below`",
    ),
    "exec_commands": (
        "[sensors.system]\n[actuators.x]\nplugin = 'exec'\ncommands = { go = '/bin/true' }\n",
        "actuators.x.commands[...]: expected an array",
    ),
    "exec_timeout": (
        "[sensors.system]\n[actuators.x]\nplugin = 'exec'\ncommands = { go = ['/bin/true'] }\n"
        "run_timeout = 0\n",
        "actuators.x.run_timeout: expected a number > 0.0, got 0",
    ),
    "file_actuator_path": (
        "[sensors.system]\n[actuators.led]\nplugin = 'file'\ntargets = { led = 'rel/path' }\n",
        "actuators.led: `targets.led`: 'rel/path' is not an absolute path",
    ),
    "webhook_url": (
        "[sensors.system]\n[actuators.hook]\nplugin = 'webhook'\nurl = 'ftp://x'\n",
        "actuators.hook: `url` 'ftp://x' is not an http:// or https:// URL",
    ),
    "webhook_missing_url": (
        "[sensors.system]\n[actuators.hook]\nplugin = 'webhook'\n",
        "actuators.hook.url: required key is missing",
    ),
    "session_ttl": (
        "[sensors.system]\n[actuators.s]\nplugin = 'session'\nttl = -1\n",
        "actuators.s.ttl: expected a number > 0.0, got -1",
    ),
    "startup_error": (
        "[sensors.system]\nstartup_error = 'ignore'\n",
        "sensors.system.startup_error: Invalid enum value 'ignore'",
    ),
    "degraded_after": (
        "[sensors.system]\ndegraded_after = 0\n",
        "sensors.system.degraded_after: expected an integer >= 1, got 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_config_names_the_plugin_and_the_key(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "agentd.toml"
    path.write_text(text)
    out = subprocess.run(
        [*AGENTD, "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert expected in lines, lines
    assert "Traceback" not in out.stderr
