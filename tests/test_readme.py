"""The README a newcomer reads first: every file it points at is in this repository, and it
reloads the way that works for both a pip install and the one-file binary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_linked_or_named_file_is_in_the_repository() -> None:
    links = re.findall(r"\]\(([^)#\s]+)", README)
    named = re.findall(r"`((?:\.\./|docs/|packaging/|cross-build/|bench/)[^`\s]*)`", README)
    assert links, "the README links its docs"
    concrete = [p for p in links + named if not p.startswith("http") and "<" not in p]
    missing = [p for p in concrete if not (ROOT / p).exists()]
    assert missing == []
    assert "../" not in "".join(links + named)


def test_reload_is_shown_without_pidof() -> None:
    # `pidof agentd` finds nothing from a pip install and two PIDs in the one-file binary
    assert "pidof" not in README.replace("`pidof` finds nothing", "")
    assert "agentctl reload" in README
    assert "systemctl reload agentd" in README


def test_says_where_a_non_root_run_without_xdg_runtime_dir_puts_its_socket() -> None:
    assert "/tmp/agentd-<uid>" in README


def test_every_toml_example_passes_check_config(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        text = block if "[sensors." in block else "[sensors.system]\n" + block
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        out = subprocess.run(
            [sys.executable, "-m", "agentd", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, (block, out.stdout, out.stderr)
