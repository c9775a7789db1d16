"""What agentctl says, against a real daemon: a missing session in a compare-and-set, a bad
--events or --timeout as usage errors (exit 2) with plain lists, histogram bounds labelled as
bounds, the status Store line in words, "1 attempt"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.control.helpers import TESTPLUGINS, Agent, config, ctl_json


def test_compare_and_set_on_a_missing_session_says_it_does_not_exist(short_tmp: Path) -> None:
    with Agent(short_tmp, config(short_tmp, store=True), argv=TESTPLUGINS) as agent:
        agent.ready()
        gone = agent.ctl("sessions", "put", "gw/x", "1", "--expected-version", "3")
        assert (gone.returncode, gone.stderr) == (
            1,
            "agentctl: session 'gw/x': expected version 3, it does not exist\n",
        )
        assert agent.ctl("sessions", "put", "gw/x", "1").returncode == 0
        taken = agent.ctl("sessions", "put", "gw/x", "2", "--expected-version", "0")
        assert taken.stderr == (
            "agentctl: session 'gw/x': expected it not to exist, current version is 1\n"
        )
        # the Store line in words
        status = agent.ctl("status").stdout
        line = next(x for x in status.splitlines() if x.strip().startswith("Store:"))
        assert re.fullmatch(
            r"\s+Store: ok, \S+agentd\.db, size [\d.]+ (bytes|KiB|MiB), queue \d+ of 10000, "
            r"schema \d+, synchronous full, \d+ commits?(, the last at [\d: -]+)?(, .*)?",
            line,
        ), line
        assert "size bytes" not in line
        assert "queue depth" not in line
        assert agent.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["watch", "--events", "tick,bogus"],
            "argument --events: unknown event kind bogus (known: tick, action, state)",
        ),
        (["--timeout", "0", "ping"], "argument --timeout: must be more than 0 and at most"),
        (["ping", "--timeout", "-1"], "argument --timeout: must be more than 0 and at most"),
        (["ping", "--timeout", "nan"], "argument --timeout: must be more than 0 and at most"),
        (["ping", "--timeout", "soon"], "argument --timeout: not a number of seconds: 'soon'"),
    ],
)
def test_bad_arguments_are_usage_errors(agent: Agent, args: list[str], message: str) -> None:
    proc = agent.ctl(*args)
    assert proc.returncode == 2, proc
    assert message in proc.stderr
    assert "[" not in proc.stderr.splitlines()[-1].partition("error: ")[2]  # a plain list
    assert proc.stdout == ""


def test_histograms_are_labelled_as_bucket_bounds_and_one_attempt_is_singular(
    agent: Agent,
) -> None:
    table = agent.ctl("metrics", "agentd.loop.tick.lateness").stdout
    assert re.search(r"n=\d+ p50<=[\d.]+ (us|ms) p99<=[\d.]+ (us|ms)", table), table
    assert "p50=" not in table
    act = agent.ctl("act", "log", "ping", "-p", "message=hi")
    assert re.match(r"ok: log\.ping \(1 attempt, [\d.]+ ms\)", act.stdout), act.stdout
    assert ctl_json(agent, "act", "log", "ping", "-p", "message=hi")["attempts"] == 1
