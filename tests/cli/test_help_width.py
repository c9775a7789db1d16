"""``agentd``'s help is laid out exactly as argparse's own formatter would, though the width
is read without importing shutil (agentd/cli/agentd.py `_Formatter`, issue #18)."""

from __future__ import annotations

import argparse

import pytest

from agentd.cli import agentd


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += action.choices.values()
    return out


@pytest.mark.parametrize("columns", [None, "40", "57", "200", "0", "junk"])
def test_help_is_argparses_own(columns: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)  # stdout is not a terminal here: 80
    else:
        monkeypatch.setenv("COLUMNS", columns)
    ours = _parsers(agentd._parser())
    assert len(ours) > 5  # every sub-command's parser is ours too
    for p in ours:
        assert p.formatter_class is agentd._Formatter
        ours_text = p.format_help()
        p.formatter_class = argparse.HelpFormatter
        assert ours_text == p.format_help(), p.prog
