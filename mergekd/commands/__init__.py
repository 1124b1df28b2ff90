"""CLI commands, one module per command, each with the pydantic options model its flags are generated from
(:mod:`.options`); ``mergekd/cli.py`` registers them on the typer app."""
