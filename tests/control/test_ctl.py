"""Every command through agentctl against a real daemon subprocess, as a table and as --json."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.control.helpers import AGENTCTL, TESTPLUGINS, Agent, config, ctl, ctl_json
from tests.utils import wait_for


def test_ping(agent: Agent) -> None:
    proc = agent.ctl("ping")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"pong from {re.escape(str(agent.socket))} in [\d.]+ ms\n", proc.stdout)
    doc = ctl_json(agent, "ping")
    assert doc["result"] == "pong"
    assert doc["rtt"] > 0


def test_hello(agent: Agent) -> None:
    proc = agent.ctl("hello")
    assert proc.returncode == 0, proc.stderr
    assert f"agentd 0.1.0 (pid {agent.pid}), protocol 1, you are uid 0 with role admin" in (
        proc.stdout
    )
    assert re.search(r"^pause +admin +Pause the loop", proc.stdout, re.M)
    doc = ctl_json(agent, "hello")
    assert doc["protocol"] == 1
    assert doc["role"] == "admin"
    assert doc["commands"]["status"]["role"] == "read"
    assert doc["limits"]["max_frame"] == 1024 * 1024


def test_status(agent: Agent) -> None:
    proc = agent.ctl("status")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("● agentd 0.1.0 - running\n")
    assert f"PID: {agent.pid}\n" in out
    assert f"Config: {agent.config_path} (reload generation " in out
    assert re.search(r"Loop: \d+ ticks every 0\.2s; lateness p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert "Store: disabled" in out
    assert re.search(r"Process: RSS [\d.]+M, CPU [\d.]+s", out)
    # the plugin table is aligned: every row starts its STATE column at the same offset
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("NAME"))
    col = lines[head].index("STATE")
    rows = lines[head + 1 :]
    assert [r.split()[0] for r in rows] == ["system", "switch", "cpu", "log"]
    assert all(r[col:].split()[0] == "ok" for r in rows)
    doc = ctl_json(agent, "status")
    assert doc["pid"] == agent.pid
    assert doc["state"] == "running"
    assert doc["config"] == str(agent.config_path)
    assert doc["loop"]["ticks"] >= 1
    assert doc["loop"]["lateness_p99"] >= doc["loop"]["lateness_p50"] >= 0
    assert doc["process"]["rss"] > 10_000_000
    assert doc["store"] is None
    assert {p["name"] for p in doc["plugins"]} == {"system", "switch", "cpu", "log"}
    assert doc["control"]["connections"] >= 1


def test_plugins_and_plugin(agent: Agent) -> None:
    proc = agent.ctl("plugins")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^switch +sensor +switch +ok +\d+ +0 +-$", proc.stdout, re.M)
    doc = ctl_json(agent, "plugins")
    log = next(p for p in doc if p["name"] == "log")
    assert log["kind"] == "actuator"
    assert log["actions"] == ["*"]
    proc = agent.ctl("plugin", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cpu (policy, plugin threshold from builtin) - ok\n")
    assert 'metric = "system.cpu.percent"' in proc.stdout
    assert "Schema:" in proc.stdout
    doc = ctl_json(agent, "plugin", "cpu")
    assert doc["config"]["for_ticks"] == 1
    assert doc["schema"]["config"]["properties"]["metric"]["type"] == "string"
    missing = agent.ctl("plugin", "nope")
    assert missing.returncode == 1
    assert missing.stderr == (
        "agentctl: no plugin named 'nope' (configured: cpu, log, switch, system)\n"
    )
    missing_json = agent.ctl("--json", "plugin", "nope")
    assert json.loads(missing_json.stdout)["error"]["code"] == "not_found"


def test_tick(agent: Agent) -> None:
    proc = agent.ctl("tick")
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"tick \d+: \d+ readings, 0 errors, \d+ actions in [\d.]+ ms", proc.stdout)
    assert re.search(r"^switch +n +\d+(\.0)?$", proc.stdout, re.M)
    first = ctl_json(agent, "tick")
    second = ctl_json(agent, "tick")
    assert second["tick"] > first["tick"]
    assert first["manual"] is True
    assert first["observation"]["readings"]["switch"]["n"] >= 1


def test_pause_resume(agent: Agent) -> None:
    assert agent.ctl("pause").stdout == "paused\n"
    assert agent.ctl("pause").stdout == "already paused\n"
    doc = ctl_json(agent, "status")
    assert doc["loop"]["paused"] is True
    before = doc["loop"]["ticks"]
    time.sleep(0.6)  # three intervals
    assert ctl_json(agent, "status")["loop"]["ticks"] == before
    assert "(paused)" in agent.ctl("status").stdout
    assert ctl_json(agent, "resume") == {"state": "running", "changed": True}
    wait_for(lambda: ctl_json(agent, "status")["loop"]["ticks"] > before, 5, what="ticks")
    assert ctl_json(agent, "pause")["changed"] is True
    assert agent.ctl("resume").stdout == "resumed\n"


def test_act(agent: Agent) -> None:
    proc = agent.ctl("act", "log", "ping", "-p", "message=hello there", "-p", "n=3")
    assert proc.returncode == 0, proc.stderr
    assert re.match(
        r"ok: log\.ping \(1 attempts, [\d.]+ ms\): action ping: hello there", proc.stdout
    )
    agent.wait_log(r"action ping: hello there \[n=3\] \(from agentctl \(uid 0\)\)")
    doc = ctl_json(agent, "act", "log", "ping", "-p", "message=x")
    assert doc["status"] == "ok"
    assert doc["attempts"] == 1
    # params are validated against the actuator's schema: message must be a string
    bad = agent.ctl("act", "log", "ping", "-p", "message=[1]")
    assert bad.returncode == 1
    assert "rejected: log.ping" in bad.stdout
    assert bad.stderr.startswith("agentctl: ")
    assert bad.stderr.endswith("params.message: expected a string, got [1]\n")
    unknown = agent.ctl("--json", "act", "nope", "x")
    assert unknown.returncode == 1
    err = json.loads(unknown.stdout)["error"]
    assert err["code"] == "not_found"
    assert err["message"] == "no actuator named 'nope' (configured: log)"
    usage = agent.ctl("act", "log", "x", "-p", "novalue")
    assert usage.returncode == 2
    assert "expects KEY=VALUE" in usage.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list"],
        ["sessions", "get", "s1"],
        ["sessions", "put", "s1", '{"a": 1}'],
        ["sessions", "delete", "s1"],
        ["journal", "actions", "--since", "1h"],
        ["journal", "observations", "--limit", "5"],
        ["flush"],
    ],
)
def test_store_commands_without_a_store(agent: Agent, args: list[str]) -> None:
    proc = agent.ctl(*args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "agentctl: the store is disabled ([store] enabled = false)\n"
    doc = json.loads(agent.ctl("--json", *args).stdout)
    assert doc["error"]["code"] == "unavailable"


def test_call_and_errors(agent: Agent) -> None:
    assert json.loads(agent.ctl("call", "ping").stdout) == "pong"
    unknown = agent.ctl("call", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr == "agentctl: unknown command 'nope'\n"
    bad_args = agent.ctl("call", "plugin", '{"name": 3}')
    assert bad_args.returncode == 1
    assert bad_args.stderr == "agentctl: plugin: name: Expected `str`, got `int`\n"
    assert agent.ctl("call", "ping", "[").returncode == 2
    assert agent.ctl("nosuchcommand").returncode == 2
    assert agent.ctl().returncode == 2
    assert agent.ctl("journal", "actions", "--since", "yesterday-ish").returncode == 2


def test_watch_prints_events_and_stops_on_ctrl_c(agent: Agent) -> None:
    cmd = [*AGENTCTL, "--socket", str(agent.socket), "watch"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            first = proc.stdout.readline()
            assert re.match(
                r"\d\d:\d\d:\d\d\.\d{3} tick \d+: late [\d.]+ ms, took [\d.]+ ms", first
            ), first
            assert ctl(agent.socket, "act", "log", "w", "-p", "message=seen").returncode == 0
            lines = [proc.stdout.readline() for _ in range(12)]
            assert any(
                re.search(r"action log\.w ok \(1 attempts, [\d.]+ ms\) from agentctl", line)
                for line in lines
            ), lines
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    # --json: one object per line
    with subprocess.Popen(
        [*cmd, "--json", "--events", "tick"], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            events = [json.loads(proc.stdout.readline()) for _ in range(2)]
            assert [e["event"] for e in events] == ["tick", "tick"]
            assert events[1]["data"]["tick"] > events[0]["data"]["tick"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_reload_ok_and_refused(short_tmp: Path) -> None:
    os.chmod(short_tmp, 0o755)
    with Agent(short_tmp, config(short_tmp), argv=TESTPLUGINS, log_level="info") as agent:
        agent.ready()
        assert agent.ctl("reload").stdout == "reloaded (generation 1)\n"
        assert ctl_json(agent, "reload") == {"reloaded": True, "generation": 2}
        assert agent.config_path is not None
        agent.config_path.write_text(
            config(short_tmp).replace("interval = 0.2", "interval = -1")
            + "[sensors.extra]\nplugin = 'nope'\n"
        )
        proc = agent.ctl("reload")
        assert proc.returncode == 1
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert lines[:2] == [
            "agentctl: reload refused, still running the previous config: agent.interval: "
            "expected a number >= 0.01, got -1 (and 1 more)",
            "  agent.interval: expected a number >= 0.01, got -1",
        ]
        assert lines[2].startswith("  sensors.extra.plugin: unknown sensor plugin 'nope'")
        assert len(lines) == 3
        doc = json.loads(agent.ctl("--json", "reload").stdout)
        assert doc["error"]["code"] == "invalid_config"
        assert len(doc["error"]["details"]) == 2
        assert ctl_json(agent, "status")["reload_generation"] == 2
        assert agent.stop() == 0


def test_not_running(short_tmp: Path) -> None:
    sock = short_tmp / "agentd.sock"
    proc = ctl(sock, "status")
    assert proc.returncode == 3
    assert proc.stderr == f"agentctl: agentd is not running (no socket at {sock})\n"
    doc = json.loads(ctl(sock, "--json", "ping").stdout)
    assert doc["error"]["code"] == "not_running"
    # a stale socket file, nobody listening
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    stale = ctl(sock, "ping")
    assert stale.returncode == 3
    assert "agentd is not running" in stale.stderr


def test_agentctl_imports_stay_light() -> None:
    code = (
        "import sys, agentd.cli.main, agentd.cli.agentctl; "
        "heavy = [m for m in ('asyncio', 'uvloop', 'aiosqlite', 'opentelemetry', "
        "'agentd.daemon', 'agentd.store', 'psutil') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_sessions_journal_and_flush_with_the_store(short_tmp: Path) -> None:
    with Agent(short_tmp, config(short_tmp, store=True), argv=TESTPLUGINS) as agent:
        agent.ready()
        # sessions: put (create, compare-and-set), get, list, delete
        put = agent.ctl("sessions", "put", "gw/a", '{"n": 1, "tags": ["x"]}')
        assert put.returncode == 0, put.stderr
        assert put.stdout == "stored session gw/a (version 1)\n"
        doc = ctl_json(agent, "sessions", "put", "gw/a", '{"n": 2}', "--expected-version", "1")
        assert doc["version"] == 2
        conflict = agent.ctl("sessions", "put", "gw/a", "3", "--expected-version", "1")
        assert conflict.returncode == 1
        assert conflict.stderr == (
            "agentctl: session 'gw/a': expected version 1, current version is 2\n"
        )
        assert (
            json.loads(
                agent.ctl(
                    "--json", "sessions", "put", "gw/a", "3", "--expected-version", "1"
                ).stdout
            )["error"]["code"]
            == "conflict"
        )
        assert ctl_json(agent, "sessions", "put", "gw/b", "plain words")["state"] == "plain words"
        got = agent.ctl("sessions", "get", "gw/a")
        assert got.returncode == 0
        assert got.stdout.startswith("session gw/a (version 2)\n")
        assert '"n": 2' in got.stdout
        assert ctl_json(agent, "sessions", "get", "gw/a")["state"] == {"n": 2}
        listing = agent.ctl("sessions", "list", "--prefix", "gw/")
        lines = listing.stdout.splitlines()
        assert lines[0].split() == ["ID", "VERSION", "UPDATED", "EXPIRES", "STATE"]
        assert [line.split()[0] for line in lines[1:]] == ["gw/a", "gw/b"]
        page = ctl_json(agent, "sessions", "list", "--prefix", "gw/", "--limit", "1")
        assert [s["id"] for s in page] == ["gw/a"]
        after = ctl_json(agent, "sessions", "list", "--prefix", "gw/", "--after", "gw/a")
        assert [s["id"] for s in after] == ["gw/b"]
        assert agent.ctl("sessions", "delete", "gw/b").stdout == "deleted session gw/b\n"
        missing = agent.ctl("sessions", "get", "gw/b")
        assert (missing.returncode, missing.stderr) == (1, "agentctl: no session 'gw/b'\n")
        assert agent.ctl("--json", "sessions", "delete", "gw/b").returncode == 1
        # the journals, after a flush
        assert agent.ctl("act", "log", "journaled", "-p", "message=j").returncode == 0
        assert agent.ctl("flush").stdout == "flushed\n"
        assert ctl_json(agent, "flush") == {"flushed": True}
        actions = ctl_json(agent, "journal", "actions", "--since", "10m")
        assert any(a["action"]["name"] == "journaled" and a["status"] == "ok" for a in actions), (
            actions
        )
        table = agent.ctl("journal", "actions", "--since", "10m")
        assert re.search(r"^\S+ \S+ +log +journaled +ok +1 ", table.stdout, re.M), table.stdout
        obs = ctl_json(agent, "journal", "observations", "--limit", "3")
        assert 1 <= len(obs) <= 3
        assert "switch" in obs[0]["readings"]
        table = agent.ctl("journal", "observations", "--limit", "3")
        assert table.stdout.splitlines()[0].split() == [
            "TICK",
            "TIME",
            "READINGS",
            "ERRORS",
            "SAMPLE",
        ]
        assert len(table.stdout.splitlines()) == 1 + len(obs)
        status = ctl_json(agent, "status")
        assert status["store"] is not None
        assert "Store: " in agent.ctl("status").stdout
        assert "Store: disabled" not in agent.ctl("status").stdout
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()
