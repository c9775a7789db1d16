"""`agentd version` and `agentctl --version` answer before the heavy imports (uvloop, the
store, OpenTelemetry): in the frozen binary every start already pays for unpacking the
bundle, so nothing else should be added to these paths."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("uvloop", "aiosqlite", "opentelemetry", "psutil", "agentd.daemon", "agentd.store")


def _imported(*args: str) -> tuple[str, set[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agentd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return result.stdout, modules


@pytest.mark.parametrize(
    ("args", "output"),
    [(("version",), "agentd 0.1.0\n"), (("ctl", "--version"), "agentctl 0.1.0\n")],
)
def test_version_answers_before_heavy_imports(args: tuple[str, ...], output: str) -> None:
    stdout, modules = _imported(*args)
    assert stdout == output
    assert "agentd.cli" in modules  # the measurement sees our imports
    heavy = sorted(m for m in modules if m.startswith(HEAVY))
    assert heavy == [], heavy


def test_the_measurement_sees_heavy_imports() -> None:
    """The check above can fail: `plugins` loads the registry, which imports psutil."""
    _, modules = _imported("plugins")
    assert any(m.startswith("psutil") for m in modules)
