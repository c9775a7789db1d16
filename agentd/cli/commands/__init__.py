"""agentctl's subcommands, one module per area; `agentd.cli.agentctl.COMMANDS` names them."""
