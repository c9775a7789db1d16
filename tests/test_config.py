from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentd import config as cfg
from agentd.errors import ConfigError
from agentd.plugins.registry import default_registry

BROKEN = {
    "unknown_key": (
        "[agent]\ninterval = 1.0\ncolour = 'red'\n[sensors.system]\n",
        "agent.colour: unknown key",
    ),
    "unknown_plugin_key": (
        "[sensors.cpu]\nplugin = 'system'\nbogus = 1\n",
        "sensors.cpu.bogus: unknown key",
    ),
    "wrong_type": (
        "[agent]\ninterval = 'fast'\n[sensors.system]\n",
        'agent.interval: expected a number, got "fast"',
    ),
    "negative_interval": (
        "[sensors.cpu]\nplugin = 'system'\ninterval = -1\n",
        "sensors.cpu.interval: expected a number >= 0.01, got -1",
    ),
    "unknown_plugin": (
        "[sensors.cpu]\nplugin = 'nosuch'\n",
        "sensors.cpu.plugin: unknown sensor plugin 'nosuch' (known: command, file, ",
    ),
    "unknown_plugin_by_name": ("[sensors.gpio7]\n", "sensors.gpio7: unknown sensor plugin 'gpio7'"),
    "wrong_kind": (
        "[sensors.t]\nplugin = 'threshold'\n",
        "sensors.t.plugin: 'threshold' is a policy plugin, not a sensor",
    ),
    "plugin_own_check": (
        "[sensors.system]\n[policies.p]\nplugin = 'threshold'\nmetric = 'a.b'\n[actuators.log]\n",
        "policies.p: set exactly one of `above` or `below`",
    ),
    "missing_actuator": (
        "[sensors.system]\n[policies.p]\nplugin = 'threshold'\n"
        "metric = 'system.cpu.percent'\nabove = 1.0\nactuator = 'siren'\n",
        "policies.p.actuator: no actuator named 'siren' is configured",
    ),
    "missing_required": (
        "[sensors.system]\n[policies.p]\nplugin = 'threshold'\nabove = 1\n[actuators.log]\n",
        "policies.p.metric: required key is missing",
    ),
    "no_sensors": (
        "[agent]\ninterval = 2.0\n",
        "sensors: at least one enabled sensor must be configured",
    ),
    "empty_file": ("", "the file is empty"),
    "only_comments": ("# nothing here\n\n", "sensors: at least one enabled sensor"),
    "not_toml": ("this is = = not toml", "not valid TOML: Expected '=' after a key"),
    "section_not_table": ("sensors = 3\n", "sensors: expected a table of named sensors, got 3"),
}


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_config_names_the_problem(tmp_path: Path, case: str) -> None:
    text, expected = BROKEN[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        cfg.load(path, default_registry)
    assert any(expected in line for line in err.value.errors), err.value.errors
    assert all("\n" not in line for line in err.value.errors)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN["negative_interval"][0])
    out = run_check(bad)
    assert out.returncode == 1
    assert out.stderr.strip() == "sensors.cpu.interval: expected a number >= 0.01, got -1"
    assert "Traceback" not in out.stderr
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x00\xff\xfe\x01garbage")
    out = run_check(binary)
    assert out.returncode == 1
    assert out.stderr.strip().endswith("not a TOML file (not UTF-8 text at byte 1)")
    missing = run_check(tmp_path / "nope.toml")
    assert missing.returncode == 1
    assert "nope.toml: no such file" in missing.stderr
    good = tmp_path / "good.toml"
    good.write_text(cfg.DEFAULT_CONFIG)
    out = run_check(good)
    assert (out.returncode, out.stdout.strip()) == (0, "ok")


def test_several_errors_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "many.toml"
    path.write_text("colour = 1\n[agent]\ninterval = 0\n[sensors.a]\nplugin = 'x'\n")
    out = run_check(path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1
    assert lines[:2] == [
        "colour: unknown key",
        "agent.interval: expected a number >= 0.01, got 0",
    ]
    assert len(lines) == 3
    assert lines[2].startswith("sensors.a.plugin: unknown sensor plugin 'x' (known: command, ")


def test_default_config_round_trips() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentd", "print-default-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == cfg.DEFAULT_CONFIG
    conf = cfg.loads(out.stdout, default_registry)
    assert conf.agent.interval == 1.0
    assert conf.sensors["system"].plugin == "system"
    assert conf.policies["cpu_high"].config.above == 90.0  # type: ignore[attr-defined]
    assert set(conf.actuators) == {"log"}


def test_plugin_defaults_to_instance_name() -> None:
    conf = cfg.loads("[sensors.system]\ninterval = 5\ncpu = false\n", default_registry)
    inst = conf.sensors["system"]
    assert (inst.plugin, inst.common.interval, inst.config.cpu) == ("system", 5.0, False)  # type: ignore[attr-defined]


def test_blocked_plugin_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        cfg.loads("[plugins]\nblocked = ['system']\n[sensors.system]\n", default_registry)
    assert "sensors.system.plugin: plugin 'system' is blocked" in err.value.errors


def test_paths_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = cfg.loads("[sensors.system]\n", default_registry)
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/st:/other")
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/rt")
    assert cfg.resolve_state_dir(conf) == tmp_path / "st"
    assert cfg.resolve_runtime_dir(conf) == tmp_path / "rt"
    assert cfg.resolve_state_dir(conf, "/x") == Path("/x")
    conf2 = cfg.loads(
        f"[paths]\nstate_dir = '{tmp_path}/cfg'\n[sensors.system]\n", default_registry
    )
    assert cfg.resolve_state_dir(conf2) == tmp_path / "cfg"
    assert cfg.resolve_state_dir(conf2, "/flag") == Path("/flag")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xrt"))
    import os

    if os.geteuid() == 0:
        assert cfg.resolve_state_dir(conf) == Path("/var/lib/agentd")
        assert cfg.resolve_runtime_dir(conf) == Path("/run/agentd")
    else:
        assert cfg.resolve_state_dir(conf) == tmp_path / "xdg" / "agentd"
        assert cfg.resolve_runtime_dir(conf) == tmp_path / "xrt" / "agentd"


def test_schema_cli_lists_plugin_keys() -> None:
    import json

    out = subprocess.run(
        [sys.executable, "-m", "agentd", "schema", "threshold"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["kind"] == "policy"
    props = doc["config"]["properties"]
    assert {"metric", "above", "for_ticks", "plugin", "enabled", "timeout"} <= set(props)
    assert doc["config"]["required"] == ["metric"]
    whole = json.loads(
        subprocess.run(
            [sys.executable, "-m", "agentd", "schema"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert {"agent", "sensors", "policies", "actuators", "store", "control"} <= set(
        whole["properties"]
    )


def test_closed_stdout_ends_quietly() -> None:
    import os

    r, w = os.pipe()
    os.close(r)  # the reader is gone before agentd writes (like `agentd schema | head -0`)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "agentd", "schema"],
            stdout=w,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    assert out.returncode == 1
    assert out.stderr == b""
