"""The one entry point of the one artifact: under the name ``agentctl`` (a symlink) or as
``agentd ctl ...`` it runs the control CLI (agentctl.py), else the daemon's commands
(agentd.py). Each side is imported only when chosen, so agentctl never loads the daemon."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["agentctl_main", "main"]

EXIT_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a closed stdout (``agentd schema | head``) ends it quietly."""
    try:
        return _dispatch(argv)
    except BrokenPipeError:
        # stdout's reader went away: nothing more to say, and no traceback on exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


def _dispatch(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "agentd"
    if prog.startswith("agentctl"):
        return agentctl_main(args)
    if args[:1] == ["ctl"]:
        return agentctl_main(args[1:])
    from agentd.cli import agentd

    return agentd.main(args)


def agentctl_main(argv: Sequence[str] | None = None) -> int:
    from agentd.cli import agentctl

    return agentctl.main(list(sys.argv[1:] if argv is None else argv))
