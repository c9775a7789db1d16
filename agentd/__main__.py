"""``python -m agentd`` (and the frozen artifact's entry point)."""

import sys

from agentd.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
