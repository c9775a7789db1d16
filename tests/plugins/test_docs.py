"""Every config example in docs/plugins.md is valid, and every built-in is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentd import config as cfg
from agentd.plugins.builtin import BUILTINS
from agentd.plugins.registry import default_registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BLOCKS = [b for b in re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S) if "[project" not in b]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0] for b in BLOCKS])
def test_config_example_is_valid(block: str) -> None:
    text = block
    if "[sensors." not in text:
        text += "\n[sensors.system]\n"
    if 'actuator = "log"' in text and "[actuators.log]" not in text:
        text += "\n[actuators.log]\n"
    conf = cfg.loads(text, default_registry)
    assert list(conf.instances())


def test_every_builtin_has_a_section_and_an_example() -> None:
    doc = DOC.read_text()
    for spec in BUILTINS:
        if not spec.factory.__module__.startswith("agentd.plugins.builtin"):
            continue  # test plugins added by tests/testplugins.py
        assert f"### `{spec.name}`" in doc, spec.name
        tables = [b for b in BLOCKS if re.search(rf'plugin = "{spec.name}"|\.{spec.name}\]', b)]
        assert tables, f"no config example for {spec.kind} {spec.name!r}"
