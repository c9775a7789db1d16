"""The command lines: `main` (argv[0] dispatch), `agentd` (the daemon's commands), `agentctl`
(the control CLI, a static command table), `render` (tables from reply Structs).

Kept empty on purpose: agentctl must not import the daemon side.
"""

__all__: list[str] = []
