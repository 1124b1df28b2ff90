"""CLI command implementations, one module per area; ``mergekd/cli.py`` registers them on the typer app."""
