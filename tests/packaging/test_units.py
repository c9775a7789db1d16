"""The systemd units: `systemd-analyze verify` accepts them, TimeoutStopSec covers the
daemon's staged shutdown (read from the code), and the settings the frozen binary depends on
are there."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.daemon import SHUTDOWN_STAGES

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
SERVICE = UNITS / "agentd.service"
SOCKET = UNITS / "agentd.socket"


def settings(path: Path) -> dict[str, list[str]]:
    """Active (uncommented) ``Key=value`` lines of a unit file, by key."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    """A systemd time span ("120s", "2min", "1min 30s", "90") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"not a time span: {value!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def test_stop_timeout_exceeds_the_staged_shutdown_total() -> None:
    total = sum(SHUTDOWN_STAGES.values())
    assert total > 0
    timeout = seconds(settings(SERVICE)["TimeoutStopSec"][0])
    # the stages run one after the other; systemd SIGKILLs at TimeoutStopSec
    assert timeout > total, f"TimeoutStopSec={timeout}s <= shutdown stages {total}s"


def test_the_uplink_flushes_after_the_actions_drain_and_before_the_store_closes() -> None:
    # the last actions' results are journalled before the uplink's last send; the store is
    # still open while the uplink reads what it sends
    stages = list(SHUTDOWN_STAGES)
    assert (
        stages.index("drain_actions") < stages.index("flush_uplink") < stages.index("flush_store")
    )
    assert SHUTDOWN_STAGES["flush_uplink"] > 0


def test_service_settings_the_frozen_binary_needs() -> None:
    s = settings(SERVICE)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["all"]  # READY/WATCHDOG come from the one-file child
    assert s["KillMode"] == ["mixed"]  # SIGTERM once, to the bootloader, which forwards it
    assert s["Restart"] == ["on-failure"]
    assert seconds(s["WatchdogSec"][0]) > 0
    assert s["ExecReload"][0].split()[1:] == ["reload"]
    assert s["ExecReload"][0].split()[0].endswith("/agentctl")
    for key in ("RuntimeDirectory", "ConfigurationDirectory", "User", "Group"):
        assert s[key] == ["agentd"], key
    # the bootloader unpacks under $TMPDIR: on disk in the state directory, not tmpfs
    # (tests/packaging/test_unpack.py), emptied before each start
    assert s["StateDirectory"] == ["agentd agentd/unpack"]
    assert s["Environment"] == ["TMPDIR=%S/agentd/unpack"]
    assert s["ExecStartPre"] == ["/usr/bin/find %S/agentd/unpack -mindepth 1 -delete"]
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
    ):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    text = SERVICE.read_text()
    for commented in ("#MemoryMax=", "#CPUQuota=", "#SupplementaryGroups="):
        assert commented in text, commented
    assert "MAINPID" not in text


def _verify(unit_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)", pytrace=False)
    return subprocess.run(
        [tool, "verify", *(str(unit_dir / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_systemd_analyze_verify_accepts_the_units(frozen_dir: Path, short_tmp: Path) -> None:
    """verify checks every directive and that the commands exist: the units are verified as
    written, with only the install prefix pointed at the frozen test build."""
    prefix = "/usr/local/bin/"
    for unit in (SERVICE, SOCKET):
        text = unit.read_text()
        assert text.count(prefix) >= (2 if unit is SERVICE else 0)
        (short_tmp / unit.name).write_text(text.replace(prefix, f"{frozen_dir}/"))
    result = _verify(short_tmp, SERVICE.name, SOCKET.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_systemd_analyze_verify_catches_a_bad_unit(frozen_dir: Path, short_tmp: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    text = SERVICE.read_text().replace("/usr/local/bin/", f"{frozen_dir}/")
    (short_tmp / "agentd.service").write_text(text.replace("KillMode=mixed", "KillMode=mixd"))
    result = _verify(short_tmp, "agentd.service")
    assert "Failed to parse kill mode specification, ignoring: mixd" in result.stderr


def test_the_example_config_is_valid() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(ROOT / "packaging" / "agentd.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
