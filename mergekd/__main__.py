"""``python -m mergekd ...`` (and ``accelerate launch -m mergekd distill ...``) run the CLI."""

from .cli import main

main()
