"""Tool calls through the real control plane and the real store: a manual `agentctl act`
validated (a bad one `rejected` and journaled), an idempotency key that holds across a
restart for the non-idempotent exec actuator, and the session actuator writing into the
session store."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from tests.control.helpers import AGENTCTL, Agent, ctl_json
from tests.utils import wait_for

APPEND = "import sys; open(sys.argv[1], 'a').write('x')"


def config(base: Path) -> str:
    return f"""
[agent]
interval = 0.2
[log]
heartbeat = 0
[store]
flush_interval = 0.05
[sensors.system]
cpu = false
temperatures = false
[actuators.bump]
plugin = "exec"
commands = {{ go = ["{sys.executable}", "-c", "{APPEND}", "{base}/count"] }}
[actuators.state]
plugin = "session"
prefix = "ops/"
"""


def act(agent: Agent, *args: str) -> dict[str, Any]:
    proc = agent.ctl("--json", "act", *args)
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert (proc.returncode == 0) == (doc["status"] == "ok"), proc.stderr
    return doc


def test_idempotency_key_holds_across_a_restart(short_tmp: Path) -> None:
    count = short_tmp / "count"
    with Agent(short_tmp, config(short_tmp)) as agent:
        agent.ready()
        assert act(agent, "bump", "go", "--key", "reboot-42")["status"] == "ok"
        again = act(agent, "bump", "go", "--key", "reboot-42")
        assert (again["status"], again["error"]) == (
            "skipped",
            "already done (idempotency key 'reboot-42')",
        )
        assert agent.stop() == 0
    assert count.read_text() == "x"
    with Agent(short_tmp, config(short_tmp)) as agent:  # same state directory: a restart
        agent.ready()
        after = act(agent, "bump", "go", "--key", "reboot-42")
        assert after["status"] == "skipped"
        assert act(agent, "bump", "go", "--key", "reboot-43")["status"] == "ok"
        assert agent.stop() == 0
    assert count.read_text() == "xx"


def test_bad_manual_action_is_rejected_and_journaled(short_tmp: Path) -> None:
    with Agent(short_tmp, config(short_tmp)) as agent:
        agent.ready()
        bad = act(agent, "state", "put", "--param", "value=1")
        assert bad["status"] == "rejected"
        assert bad["error"] == "actuator 'state': put.params.session: required key is missing"
        unknown = act(agent, "bump", "rm")
        assert unknown["error"] == (
            "actuator 'bump': no command 'rm' in the allowlist (allowed: go)"
        )

        def journaled() -> list[dict[str, Any]]:
            rows = ctl_json(agent, "journal", "actions")
            return [r for r in rows if r["status"] == "rejected"]

        rows = wait_for(lambda: len(journaled()) >= 2 and journaled(), 15, what="the journal")
        assert {r["error"] for r in rows} >= {bad["error"], unknown["error"]}
        assert agent.stop() == 0


def test_session_actuator_writes_into_the_store(short_tmp: Path) -> None:
    with Agent(short_tmp, config(short_tmp)) as agent:
        agent.ready()
        put = act(
            agent,
            "state",
            "put",
            "--param",
            "session=mode",
            "--param",
            'value={"maintenance": true}',
        )
        assert put["status"] == "ok"
        assert put["output"] == {"session": "ops/mode", "version": 1}
        got = ctl_json(agent, "sessions", "get", "ops/mode")
        assert (got["state"], got["version"]) == ({"maintenance": True}, 1)
        assert act(agent, "state", "delete", "--param", "session=mode")["output"] == {
            "session": "ops/mode",
            "deleted": True,
        }
        assert agent.stop() == 0
    assert "keeps sessions in memory only" not in agent.log()


# the first run hangs (the daemon is killed under it); a second run would return at once
SLOW = (
    "import os, sys, time; first = not os.path.exists(sys.argv[1]);"
    " open(sys.argv[1], 'a').write('x'); open(sys.argv[2], 'w').write(str(os.getpid()));"
    " time.sleep(60 if first else 0)"
)


def test_idempotency_key_holds_across_a_crash_mid_action(short_tmp: Path) -> None:
    """SIGKILL while a non-idempotent action runs: after the restart its key is known (the
    claim was committed before the first attempt), so the action does not run twice."""
    import os
    import signal
    import subprocess

    count, pidfile = short_tmp / "count", short_tmp / "child.pid"
    cfg = config(short_tmp) + (
        f'[actuators.slow]\nplugin = "exec"\ntimeout = 120\nrun_timeout = 90\n'
        f'commands = {{ go = ["{sys.executable}", "-c", "{SLOW}", "{count}", "{pidfile}"] }}\n'
    )
    with Agent(short_tmp, cfg) as agent:
        agent.ready()
        caller = subprocess.Popen(
            [*AGENTCTL, "--socket", str(agent.socket), "act", "slow", "go", "--key", "fw-7"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: pidfile.exists() and pidfile.read_text(), 15, what="the action")
            assert agent.proc is not None
            agent.proc.kill()  # a crash in the middle of the action
            agent.proc.wait(10)
        finally:
            caller.wait(30)
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert count.read_text() == "x"
    pidfile.unlink()
    with Agent(short_tmp, cfg) as agent:
        agent.ready()
        again = act(agent, "slow", "go", "--key", "fw-7")
        assert (again["status"], again["error"]) == (
            "skipped",
            "already done (idempotency key 'fw-7')",
        )
        assert agent.stop() == 0
    assert count.read_text() == "x"
