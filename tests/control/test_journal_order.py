"""`agentctl journal` shows the newest rows by default (as `journalctl -n`), oldest of them
first; `--since` pages from a time on, `--reverse` flips the order. A real daemon with a real
store."""

from __future__ import annotations

import time
from pathlib import Path

from tests.control.helpers import TESTPLUGINS, Agent, config, ctl_json
from tests.utils import wait_for


def _ticks(agent: Agent, *args: str) -> list[int]:
    return [o["tick"] for o in ctl_json(agent, "journal", "observations", *args)]


def test_newest_rows_by_default_since_and_reverse(short_tmp: Path) -> None:
    started = time.time()
    with Agent(short_tmp, config(short_tmp, interval=0.05, store=True), argv=TESTPLUGINS) as agent:
        agent.ready()
        wait_for(
            lambda: agent.ctl("flush").returncode == 0 and len(_ticks(agent, "-n", "10")) == 10,
            20,
            what="10 journaled ticks",
        )
        assert agent.ctl("pause").returncode == 0  # a fixed journal to page through
        assert agent.ctl("flush").returncode == 0
        everything = _ticks(agent, "--since", str(started - 60), "-n", "10000")
        assert everything == sorted(everything)
        assert len(everything) >= 10
        # the default: the newest rows, oldest of them first
        assert _ticks(agent, "-n", "3") == everything[-3:]
        assert _ticks(agent, "--limit", "3", "--reverse") == everything[-3:][::-1]
        # --since: from there on, oldest first (page with it)
        assert _ticks(agent, "--since", str(started - 60), "-n", "3") == everything[:3]
        assert _ticks(agent, "--since", str(started - 60), "-n", "3", "-r") == everything[:3][::-1]
        # the table shows the same rows in the same order
        table = agent.ctl("journal", "observations", "-n", "3").stdout.splitlines()
        assert [int(line.split()[0]) for line in table[1:]] == everything[-3:]
        # the action journal too
        for i in range(3):
            assert agent.ctl("act", "log", f"a{i}", "-p", "message=m").returncode == 0
        assert agent.ctl("flush").returncode == 0
        names = [a["action"]["name"] for a in ctl_json(agent, "journal", "actions", "-n", "2")]
        assert names == ["a1", "a2"]
        bad = agent.ctl("journal", "actions", "-n", "0")
        assert bad.returncode == 2
        assert "must be between 1 and 10000, got 0" in bad.stderr
