"""`evaluate`: each [health] threshold moves the verdict, and every reason is listed."""

from __future__ import annotations

from agentd.config import HealthConfig
from agentd.health import EXIT_CODES, evaluate
from agentd.model import PluginStatus

CONFIG = HealthConfig(lateness_p99=0.1, max_rss_mb=100.0, stalled_after=10.0)
MIB = 1024 * 1024


def _plugin(name: str, state: str = "ok", kind: str = "sensor") -> PluginStatus:
    return PluginStatus(
        name=name,
        plugin=name,
        kind=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        last_error="OSError: gone" if state != "ok" else None,
    )


def _check(**kw: object):  # type: ignore[no-untyped-def]
    facts: dict[str, object] = {
        "interval": 1.0,
        "paused": False,
        "overdue": 0.0,
        "lateness_p99": 0.001,
        "plugins": [_plugin("a"), _plugin("b")],
        "store_state": "ok",
        "rss": 50 * MIB,
        "now": 1.0,
    }
    facts.update(kw)
    return evaluate(CONFIG, **facts)  # type: ignore[arg-type]


def test_all_within_bounds_is_ok() -> None:
    report = _check()
    assert (report.status, report.reasons, EXIT_CODES[report.status]) == ("ok", [], 0)


def test_each_threshold_degrades_with_its_reason() -> None:
    cases = {
        "lateness": ({"lateness_p99": 0.2}, "tick lateness p99 200.0 ms is above 100 ms"),
        "rss": ({"rss": 150 * MIB}, "RSS 150.0 MiB is above 100 MiB"),
        "plugin": (
            {"plugins": [_plugin("a"), _plugin("b", "degraded")]},
            "sensor 'b' is degraded: OSError: gone",
        ),
        "store": (
            {"store_state": "degraded", "store_error": "disk full"},
            "the store is degraded: disk full",
        ),
    }
    for name, (facts, reason) in cases.items():
        report = _check(**facts)
        assert report.status == "degraded", name
        assert len(report.reasons) == 1, name
        assert report.reasons[0].startswith(reason), (name, report.reasons)
        assert EXIT_CODES[report.status] == 5


def test_failing_beats_degraded_and_keeps_every_reason() -> None:
    report = _check(
        overdue=12.0, plugins=[_plugin("a", "degraded"), _plugin("b", "degraded")], rss=200 * MIB
    )
    assert report.status == "failing"
    assert EXIT_CODES[report.status] == 6
    assert report.reasons[0].startswith("the loop is stalled: no tick started for 12.0s")
    assert "every sensor is degraded" in report.reasons
    assert sum("is degraded: OSError" in r for r in report.reasons) == 2
    assert any(r.startswith("RSS 200.0 MiB") for r in report.reasons)


def test_a_paused_loop_is_not_stalled_and_a_degraded_policy_is_not_a_sensor() -> None:
    assert _check(overdue=100.0, paused=True).status == "ok"
    assert _check(overdue=9.0).status == "ok"  # within stalled_after intervals
    report = _check(plugins=[_plugin("a"), _plugin("rule", "degraded", kind="policy")])
    assert report.status == "degraded"
    assert report.reasons == ["policy 'rule' is degraded: OSError: gone"]
    assert _check(lateness_p99=None).status == "ok"  # no ticks in the window yet


def test_a_pause_longer_than_paused_after_intervals_is_failing() -> None:
    # CONFIG: paused_after is the default, 300 intervals (1 s here)
    assert _check(paused=True, paused_for=299.0).status == "ok"
    report = _check(paused=True, paused_for=301.0, overdue=301.0)
    assert report.status == "failing"
    assert report.reasons == ["the loop is paused: for 301.0s (301 intervals, more than 300)"]
    assert EXIT_CODES[report.status] == 6
    # paused_for only counts while paused
    assert _check(paused=False, paused_for=500.0).status == "ok"


def test_exit_codes_are_apart_from_agentctls_own() -> None:
    from agentd.cli.agentctl import EXIT_ERROR, EXIT_FORBIDDEN, EXIT_NOT_RUNNING, EXIT_USAGE

    assert EXIT_CODES["ok"] == 0
    own = {EXIT_ERROR, EXIT_FORBIDDEN, EXIT_NOT_RUNNING, EXIT_USAGE}
    assert len({EXIT_CODES["degraded"], EXIT_CODES["failing"], *own}) == 2 + len(own)
