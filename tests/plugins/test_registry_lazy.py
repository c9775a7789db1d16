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


def test_a_builtin_is_imported_only_when_looked_up_or_listed() -> None:
    from agentd.errors import PluginError
    from agentd.plugins.builtin import TABLE
    from agentd.plugins.registry import Registry

    loaded: list[str] = []

    def loader(row: object) -> object:
        def load() -> object:
            loaded.append(f"{row.kind}:{row.name}")  # type: ignore[attr-defined]
            return row.load()  # type: ignore[attr-defined]

        return load

    reg = Registry(blocked=["exec"])
    for row in TABLE:
        reg.register_lazy(row.name, row.kind, loader(row))  # type: ignore[arg-type]
    # names and kinds are known without importing anything (check-config's "known" lists)
    assert "modbus" in reg.names("sensor")
    assert "exec" not in reg.names("actuator")
    assert loaded == []
    assert reg.get("threshold", "policy").name == "threshold"
    assert reg.find("exec") is None  # blocked: never imported
    assert loaded == ["policy:threshold"]
    with pytest.raises(PluginError, match="duplicate sensor plugin name"):
        reg.register_lazy("modbus", "sensor", loader(TABLE[0]))
    assert len(reg.specs()) == len(TABLE) - 1  # listing loads the rest (exec stays blocked)
    assert len(loaded) == len(TABLE) - 1


def test_the_default_config_imports_only_its_own_builtins() -> None:
    code = (
        "import sys; from agentd.config import load; from agentd.plugins.registry "
        "import default_registry; load(None, default_registry); "
        "print(sorted(m for m in sys.modules if m.startswith('agentd.plugins.builtin.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    mods = {m.rsplit(".", 1)[1] for m in eval(out.stdout)}
    assert {"system", "threshold", "log_actuator"} <= mods
    assert not mods & {"modbus", "mqtt_device", "openapi", "webhook", "exec_actuator", "mqtt"}
