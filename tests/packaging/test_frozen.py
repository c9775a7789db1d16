"""The frozen one-file binary as a real process under a fake systemd: a notify socket the test
binds, $WATCHDOG_USEC, signals sent to the bootloader (systemd's main PID), the agentctl
symlink. The binary is built once per session from packaging/pyinstaller.spec, with the test
plugins (tests/testplugins.py, tests/packaging/probes.py) bundled."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.packaging.sdnotify import Notification, NotifySocket
from tests.utils import AgentProcess, wait_for

WATCHDOG = 1.2  # seconds: WATCHDOG=1 every 0.6 s while healthy

CONFIG = """
[agent]
interval = {interval}
[log]
heartbeat = 0
[sensors.switch]
[policies.stall]
hang_file = "{hang}"
"""


def _child_of(pid: int) -> int:
    """The one-file bootloader's only child: the Python process."""

    def child() -> int | None:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    return wait_for(child, 20, what=f"the child of {pid}")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(agent: AgentProcess):  # type: ignore[no-untyped-def]
    def check() -> str | None:
        assert agent.proc is not None
        if agent.proc.poll() is None:
            return None
        return f"agentd exited ({agent.proc.returncode}):\n{agent.log()[-3000:]}"

    return check


def _agentctl(
    frozen_dir: Path, sock: Path, *args: str, name: str = "agentctl"
) -> subprocess.CompletedProcess[str]:
    cmd = (
        [str(frozen_dir / name), *args]
        if name == "agentctl"
        else [str(frozen_dir / "agentd"), "ctl", *args]
    )
    return subprocess.run(
        [*cmd, "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _pings(messages: list[Notification]) -> list[float]:
    return [m.at for m in messages if "WATCHDOG=1" in m]


@pytest.mark.slow
def test_notify_lifecycle_and_watchdog_follow_the_loop(
    frozen_dir: Path, notify_socket: NotifySocket, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    hang = short_tmp / "hang"
    tmpdir = short_tmp / "run"  # as the unit does: TMPDIR is the runtime directory
    env = {
        **frozen_env,
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": str(int(WATCHDOG * 1e6)),
        "TMPDIR": str(tmpdir),
    }
    tmpdir.mkdir()
    config = CONFIG.format(interval=0.1, hang=hang)
    # systemd names the main PID in $WATCHDOG_PID: the bootloader's, not the child's
    as_systemd = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$0" "$@"', str(frozen_dir / "agentd")]
    with AgentProcess(short_tmp, config, env=env, argv=as_systemd) as agent:
        alive = _alive(agent)

        # READY=1 comes from the child, once the control socket answers and a tick ran
        ready = notify_socket.wait_for("READY=1", timeout=60, alive=alive)
        child = _child_of(agent.pid)
        assert ready.pid == child != agent.pid
        assert _ppid(child) == agent.pid
        status = _agentctl(frozen_dir, short_tmp / "run" / "agentd.sock", "status")
        assert status.returncode == 0, status.stderr
        assert ready.fields["STATUS"].startswith("ready: ")
        assert int(ready.fields["STATUS"].split()[1]) >= 1  # ticks
        assert "lateness p50" in ready.fields["STATUS"]
        assert not any("MAINPID" in m.fields for m in notify_socket.messages)
        assert [p.name for p in tmpdir.iterdir() if p.name.startswith("_MEI")]  # unpacked here

        # WATCHDOG=1 at half the period while the loop ticks
        pings = _pings(notify_socket.collect(4 * WATCHDOG))
        assert len(pings) >= 4, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert min(gaps) >= WATCHDOG / 2 - 0.05, gaps  # never faster than configured
        assert statistics.median(gaps) <= WATCHDOG * 0.75, gaps
        assert max(gaps) < WATCHDOG, gaps  # systemd would have restarted us

        # the loop hangs (a policy that ignores its timeout); the process, its event loop and
        # the control plane stay alive, but the pings stop
        hang.touch()
        hung_at = time.time()
        quiet = notify_socket.collect(2.5 * WATCHDOG)
        late = [t - hung_at for t in _pings(quiet) if t - hung_at > WATCHDOG]
        assert late == [], f"pings kept coming while the loop hung: {late}"
        assert agent.proc is not None
        assert agent.proc.poll() is None
        status = _agentctl(frozen_dir, short_tmp / "run" / "agentd.sock", "status")
        assert status.returncode == 0, status.stderr
        # ...and resume once it moves again
        hang.unlink()
        notify_socket.wait_for("WATCHDOG=1", timeout=3 * WATCHDOG, alive=alive)

        # SIGHUP to the main PID reaches the child: RELOADING=1, then READY=1
        assert agent.config_path is not None
        agent.config_path.write_text(CONFIG.format(interval=0.2, hang=hang))
        notify_socket.skip()
        agent.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for("RELOADING=1", alive=alive)
        assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        back = notify_socket.wait_for("READY=1", alive=alive)
        assert back.at >= reloading.at
        assert back.fields["STATUS"].startswith("reloaded (generation 1)"), back.fields
        # a bad config: still RELOADING=1 then READY=1, and the status says why
        agent.config_path.write_text("[agent]\ninterval = -1\n")
        agent.signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", alive=alive)
        refused = notify_socket.wait_for("READY=1", alive=alive)
        assert (
            "reload refused (agent.interval: expected a number >= 0.01" in refused.fields["STATUS"]
        )
        # ExecReload=agentctl reload: the same, but the refusal reaches the caller
        reload = _agentctl(frozen_dir, short_tmp / "run" / "agentd.sock", "reload")
        assert reload.returncode == 1
        assert "agent.interval: expected a number >= 0.01, got -1" in reload.stderr
        notify_socket.wait_for("RELOADING=1", alive=alive)
        notify_socket.wait_for("READY=1", alive=alive)

        # SIGTERM to the main PID: STOPPING=1, exit status 0 passed through, unpacked files gone
        agent.signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", timeout=30)
        assert agent.proc.wait(60) == 0
    assert not [p for p in tmpdir.iterdir() if p.name.startswith("_MEI")]
    log = agent.log()
    assert "systemd watchdog: 1.2s" in log
    assert "Traceback" not in log


def test_agentctl_symlink_and_agentd_ctl_answer_status(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    config = CONFIG.format(interval=0.2, hang=short_tmp / "never")
    sock = short_tmp / "run" / "agentd.sock"
    with AgentProcess(
        short_tmp, config, env=frozen_env, argv=[str(frozen_dir / "agentd")]
    ) as agent:
        agent.wait_log(r"control socket listening", timeout=60)
        via_link = _agentctl(frozen_dir, sock, "status", "--json")
        via_ctl = _agentctl(frozen_dir, sock, "status", "--json", name="ctl")
        assert agent.stop(30) == 0
    for result in (via_link, via_ctl):
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc, result.stdout
    assert (frozen_dir / "agentctl").is_symlink()


def test_version_answers_and_exit_codes_pass_through(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    agentd = str(frozen_dir / "agentd")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [agentd, *args], capture_output=True, text=True, timeout=60, check=False, env=frozen_env
        )

    version = run("version")
    assert (version.returncode, version.stdout) == (0, "agentd 0.1.0\n")
    assert run("no-such-command").returncode == 2
    bad = short_tmp / "bad.toml"
    bad.write_text("[agent]\ninterval = 0\n")
    refused = run("run", "--config", str(bad), "--state-dir", str(short_tmp / "s"))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "agentd: bad config: agent.interval: expected a number >= 0.01, got 0"
    )
    listed = run("plugins")
    assert listed.returncode == 0
    for name in ("system", "threshold", "log"):  # every built-in is bundled
        assert f"\n{name} " in listed.stdout, listed.stdout


def test_sigterm_to_bootloader_and_child_at_once_is_one_stop(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    """KillMode=control-group signals every process of the unit: the child gets SIGTERM from
    systemd and again from the bootloader. That is one stop request, not a forced exit (which
    a second SIGTERM later on still is). An action in flight keeps the child draining, so the
    bootloader is alive to forward its copy."""
    config = """
[agent]
interval = 0.1
drain_timeout = 1.0
[sensors.switch]
[policies.always]
plugin = "threshold"
metric = "switch.n"
above = 0.0
actuator = "slow"
[actuators.slow]
timeout = 60
"""
    with AgentProcess(
        short_tmp, config, env=frozen_env, argv=[str(frozen_dir / "agentd")]
    ) as agent:
        agent.wait_log(r"tick 3:", timeout=60)
        child = _child_of(agent.pid)
        os.kill(child, signal.SIGTERM)  # systemd, to every process of the unit
        agent.signal(signal.SIGTERM)  # ... and to the bootloader, which forwards it
        assert agent.proc is not None
        assert agent.proc.wait(60) == 0, agent.log()[-2000:]
    log = agent.log()
    assert "forcing exit" not in log
    assert log.count("stopping gracefully") == 1
    # the kernel may merge the two (one pending signal) or deliver both; the second one, if
    # seen, is "the same stop request" (tests/packaging/test_systemd.py checks that rule)
    assert "drain_actions: cancelled 1 actions still running after 1s" in log
    assert log.rstrip().endswith("agentd: stopped")


def test_opentelemetry_works_frozen(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    """Providers, propagators, context and resource detectors are found through entry points
    (package metadata) when OTEL_* variables are set; the frozen bundle must carry them."""
    otel_out, env_out = short_tmp / "otel.json", short_tmp / "env.json"
    config = f"""
[agent]
interval = 0.1
[sensors.otelprobe]
out = "{otel_out}"
timeout = 30
[sensors.envprobe]
out = "{env_out}"
timeout = 30
"""
    env = {
        **frozen_env,
        "OTEL_PROPAGATORS": "tracecontext,baggage",
        "OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider",
        "OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,process",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=agentd-frozen-test",
        "LD_LIBRARY_PATH": "/opt/agentd-test/lib",
    }
    with AgentProcess(short_tmp, config, env=env, argv=[str(frozen_dir / "agentd")]) as agent:
        try:
            wait_for(lambda: otel_out.exists() and env_out.exists(), 60, what="probe reports")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; agentd's log:\n{agent.log()[-3000:]}") from None
        child = _child_of(agent.pid)
        assert agent.stop(30) == 0
    otel = json.loads(otel_out.read_text())
    assert "error" not in otel, otel
    assert otel["tracer_provider"] == "opentelemetry.sdk.trace.TracerProvider"
    assert otel["meter_provider"].startswith("opentelemetry.sdk.metrics")
    assert otel["propagator_fields"] == ["baggage", "traceparent", "tracestate"]
    assert otel["carrier"]["traceparent"].startswith(f"00-{otel['trace_id']}-{otel['span_id']}-")
    assert otel["extracted_trace_id"] == otel["trace_id"]
    assert otel["extracted_baggage"] == {"site": "frozen"}
    assert otel["spans_exported"] == ["probe"]
    assert otel["metric_points"] == [3]
    assert otel["resource"]["service.name"] == "agentd-frozen-test"
    assert otel["resource"]["process.pid"] == str(child) == str(otel["pid"])  # a detector ran
    # the dev environment has the otlp extra, so the exporter's protobuf encoding is bundled
    assert isinstance(otel["otlp_bytes"], int), otel["otlp_bytes"]
    assert otel["otlp_bytes"] > 50

    # programs agentd starts get the caller's LD_LIBRARY_PATH, not the bundle's
    seen = json.loads(env_out.read_text())
    assert seen["returncode"] == 0
    assert seen["env"].get("LD_LIBRARY_PATH") == "/opt/agentd-test/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in seen["env"]
    assert "Traceback" not in agent.log()


def test_socket_activation_through_the_bootloader(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    """systemd passes the listening control socket as fd 3 with LISTEN_PID naming the main
    PID (the bootloader): the fd survives the bootloader and the child adopts it."""
    path = short_tmp / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    fd = listener.fileno()
    # bash: fd `fd` becomes 3, LISTEN_PID is the PID that then execs the bootloader
    as_systemd = [
        "bash",
        "-c",
        f"exec 3<&{fd} {fd}<&-; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=control; "
        'exec "$0" "$@"',
        str(frozen_dir / "agentd"),
    ]
    config = CONFIG.format(interval=0.2, hang=short_tmp / "never")
    agent = AgentProcess(short_tmp, config, env=frozen_env, argv=as_systemd, pass_fds=(fd,))
    with agent:
        listener.close()  # only the daemon holds it now
        agent.wait_log(r"control socket passed by systemd: ", timeout=60)
        status = _agentctl(frozen_dir, path, "status")
        assert status.returncode == 0, status.stderr + agent.log()[-2000:]
        assert not (short_tmp / "run" / "agentd.sock").exists()  # it bound nothing itself
        assert agent.stop(30) == 0
    assert path.exists()  # an activated socket belongs to systemd: left in place


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_sigkilled_bootloader_orphans_its_child(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    """Why the unit has KillMode=mixed (its final SIGKILL reaches every process) and unpacks into
    the runtime directory (removed by systemd): SIGKILL to the bootloader alone leaves the
    Python child running and its unpacked bundle behind."""
    tmpdir = short_tmp / "tmp"
    tmpdir.mkdir()
    config = CONFIG.format(interval=0.2, hang=short_tmp / "never")
    env = {**frozen_env, "TMPDIR": str(tmpdir)}
    with AgentProcess(short_tmp, config, env=env, argv=[str(frozen_dir / "agentd")]) as agent:
        agent.wait_log(r"tick 1:", timeout=60)
        child = _child_of(agent.pid)
        agent.signal(signal.SIGKILL)
        assert agent.proc is not None
        assert agent.proc.wait(10) == -signal.SIGKILL
        time.sleep(0.5)
        assert _running(child)  # orphaned, still ticking
        assert [p for p in tmpdir.iterdir() if p.name.startswith("_MEI")]
    # AgentProcess cleans up its whole session, as systemd's cgroup kill does
    wait_for(lambda: not _running(child), 10, what="the orphaned child to be killed")
