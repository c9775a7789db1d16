"""The registry reads entry points through importlib.metadata (about 1.6 MiB of the daemon's
memory) only when an installed distribution declares the ``agentd.plugins`` group (issue #18):
the look at ``entry_points.txt`` that decides it, and a real interpreter that never imports it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agentd.plugins import registry


def _dist(site: Path, name: str, entry_points: str | None) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def test_declared_looks_for_the_group_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "other", "[console_scripts]\nother = other:main\n")
    _dist(site, "plain", None)
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "missing")])
    assert registry._declared("agentd.plugins") is False
    _dist(site, "someplugin", "[agentd.plugins]\nsome = some_mod:SPEC\n")
    assert registry._declared("agentd.plugins") is True
    assert registry._declared("agentd.other") is False


def test_a_zip_on_the_path_is_left_to_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x-1.0.dist-info/entry_points.txt", "[agentd.plugins]\nx = x:SPEC\n")
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert registry._declared("agentd.plugins") is True
    # the frozen bundle's stdlib archive holds no distributions
    monkeypatch.setattr(sys, "path", [str(tmp_path / "base_library.zip")])
    (tmp_path / "base_library.zip").write_bytes(archive.read_bytes())
    assert registry._declared("agentd.plugins") is False


def test_the_default_registry_does_not_import_importlib_metadata() -> None:
    """This virtualenv has no third-party plugin installed: the built-ins are all there and
    importlib.metadata was never imported."""
    code = (
        "import sys\n"
        "from agentd.plugins.registry import default_registry\n"
        "r = default_registry()\n"
        "assert r.find('system') is not None and r.find('threshold') is not None\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"
