"""agentctl: the control CLI. The control plane (issue "control plane") fills this in."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str]) -> int:
    del argv
    print("agentctl: the control plane is not built yet", file=sys.stderr)
    return 1
