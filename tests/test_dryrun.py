"""``agentd test``: a real subprocess runs the config's plugins for N ticks and prints readings,
the actions the policies would take, and what failed; without ``--act`` nothing acts, and no
state or runtime directory is written either way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def agentd_test(
    tmp: Path, *args: str, config: str | None = None
) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """Run ``agentd test`` with every directory rule pointed at paths under ``tmp`` that do
    not exist yet; returns the result and those of them that exist afterwards."""
    dirs = {
        "STATE_DIRECTORY": tmp / "state-env",
        "RUNTIME_DIRECTORY": tmp / "runtime-env",
        "XDG_STATE_HOME": tmp / "xdg-state",
        "XDG_RUNTIME_DIR": tmp / "xdg-runtime",
        "HOME": tmp / "home",
    }
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}}
    env["CONFIGURATION_DIRECTORY"] = str(tmp / "no-config-here")
    argv = [sys.executable, "-m", "agentd", "test", *args]
    if config is not None:
        path = tmp / "agentd.toml"
        path.write_text(f"[paths]\nstate_dir = '{tmp}/state'\nruntime_dir = '{tmp}/run'\n" + config)
        argv += ["--config", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    watched = [*dirs.values(), tmp / "state", tmp / "run"]
    return out, [d for d in watched if d.exists()]


def test_the_default_config_reads_and_writes_nothing(tmp_path: Path) -> None:
    out, written = agentd_test(tmp_path, "--ticks", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert written == []
    lines = out.stdout.splitlines()
    assert lines[0] == "testing the embedded default config: 2 ticks"
    assert [line for line in lines if line.startswith("tick ")] != []
    assert len([line for line in lines if line.startswith("tick ")]) == 2
    cpu = [line.split() for line in lines if " cpu.percent " in line]
    assert len(cpu) == 2
    assert all(row[0] == "system" and row[-1] == "%" for row in cpu)
    assert lines[-1] == "ok: 2 ticks"
    assert out.stderr == ""


ACTING = """
[sensors.system]
[policies.hot]
plugin = "threshold"
metric = "system.memory.percent"
above = 0.0
actuator = "log"
params = { message = "memory in use" }
[policies.mark]
plugin = "rules"
conditions = [{ metric = "system.memory.percent", op = ">", value = 0 }]
actuator = "touch"
action = "mark"
params = { name = "tick-{tick}" }
[actuators.log]
[actuators.touch]
plugin = "exec"
commands = { mark = ["/usr/bin/touch", "OUT/{name}"] }
"""


def test_actions_are_validated_and_printed_but_not_run(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    conf = ACTING.replace("OUT", str(tmp_path / "out"))
    out, written = agentd_test(tmp_path, config=conf)
    assert out.returncode == 0, out.stdout + out.stderr
    assert written == []
    assert list((tmp_path / "out").iterdir()) == []  # exec was not called
    assert '  would run touch.mark (from mark) {"name": "tick-1"}' in out.stdout.splitlines(), (
        out.stdout
    )
    assert "  would run log.alert (from hot) " in out.stdout
    assert '"metric": "system.memory.percent"' in out.stdout
    assert "--act" not in out.stdout


def test_act_really_runs_them_after_saying_so(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    conf = ACTING.replace("OUT", str(tmp_path / "out"))
    out, written = agentd_test(tmp_path, "--act", config=conf)
    assert out.returncode == 0, out.stdout + out.stderr
    assert written == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tick-1"]
    lines = out.stdout.splitlines()
    said = lines.index("--act: the actuators really run: their side effects happen")
    ran = [i for i, line in enumerate(lines) if line.startswith("  ran touch.mark ")]
    assert ran
    assert ran[0] > said
    assert lines[ran[0]].startswith(
        '  ran touch.mark (from mark) {"name": "tick-1"}: ok (1 attempt)'
    )


def test_failures_are_each_reported_and_exit_1(tmp_path: Path) -> None:
    conf = f"""
[sensors.system]
[sensors.gone]
plugin = "file"
path = "{tmp_path}/no-such-device"
[sensors.late]
plugin = "file"
path = "{tmp_path}/late"
interval = 1.0
[policies.bad]
plugin = "rules"
conditions = [{{ metric = "system.memory.percent", op = ">", value = 0 }}]
actuator = "touch"
action = "mark"
params = {{ name = "../../etc/x" }}
[actuators.touch]
plugin = "exec"
commands = {{ mark = ["/usr/bin/touch", "{tmp_path}/out/{{name}}"] }}
"""
    (tmp_path / "late").write_text("1\n")
    out, written = agentd_test(tmp_path, config=conf)
    assert out.returncode == 1, out.stdout + out.stderr
    assert written == []
    lines = out.stdout.splitlines()
    assert (
        f"sensor 'gone' failed to start: FileNotFoundError: [Errno 2] No such file or "
        f"directory: '{tmp_path}/no-such-device'" in lines
    ), lines
    rejected = [line for line in lines if line.startswith("  rejected touch.mark (from bad) ")]
    assert len(rejected) == 1
    assert rejected[0].endswith("mark.params.name: '../../etc/x' does not match param_pattern")
    assert lines[-1] == "FAILED: 1 tick, 2 problems"
    assert "Traceback" not in out.stdout + out.stderr


def test_a_sensor_that_fails_to_read_and_a_reference_problem_count(tmp_path: Path) -> None:
    (tmp_path / "value").write_text("12\n")
    conf = f"""
[sensors.v]
plugin = "file"
path = "{tmp_path}/value"
[sensors.words]
plugin = "file"
path = "{tmp_path}/words"
startup_error = "skip"
[policies.p]
plugin = "threshold"
metric = "v.valu"
above = 1.0
[actuators.log]
"""
    (tmp_path / "words").write_text("no number here\n")
    out, _ = agentd_test(tmp_path, config=conf)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert (
        "policies.p.metric: sensor 'v' has no metric 'valu' (did you mean 'value'?) "
        "(it produces: value)" in lines
    ), lines
    assert f"  sensor 'words' failed to read: ValueError: {tmp_path}/words: no number in " in (
        out.stdout
    )
    assert "  v       value    12" in out.stdout or any(
        line.split()[:3] == ["v", "value", "12"] for line in lines
    )


@pytest.mark.parametrize("ticks", ["0", "-3", "x", "10001"])
def test_a_bad_tick_count_is_a_usage_error(tmp_path: Path, ticks: str) -> None:
    out, _ = agentd_test(tmp_path, "--ticks", ticks)
    assert out.returncode == 2
    assert "argument --ticks" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out, written = agentd_test(tmp_path, config="[sensors.system]\ninterval = -1\n")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == "sensors.system.interval: expected a number >= 0.01, got -1\n"
    assert written == []


def test_a_read_hung_in_a_thread_is_reported_and_does_not_hold_the_exit(tmp_path: Path) -> None:
    (tmp_path / "block").touch()  # stays: the read never returns
    conf = tmp_path / "agentd.toml"
    conf.write_text(
        f"[agent]\ninterval = 0.2\n[sensors.system]\n"
        f"[sensors.probe]\nplugin = 'switch'\nblock_file = '{tmp_path}/block'\ntimeout = 0.5\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "tests.testplugins", "test", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "  sensor 'probe' failed to read: timed out after 0.5s" in out.stdout.splitlines()
    assert out.stdout.splitlines()[-1] == "FAILED: 1 tick, 1 problem"
