"""The ``mergekd`` command line (typer). Each command is small and delegates to a library function.

Errors that are the user's (``MergekdError``) print one red line and exit with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from .errors import MergekdError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distil several teachers with different tokenizers into one student, through bytes.")
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """mergekd: distil several teachers with different tokenizers into one student, through bytes."""


def _register_commands() -> None:
    """Every command lives in ``mergekd/commands/``, one module each, its options generated from a pydantic model
    there (``commands/options.py``)."""
    from .commands.ablate_cmd import ablate_command
    from .commands.cache_cmd import cache_command
    from .commands.demo_cmd import demo_command
    from .commands.distill_cmd import distill_command
    from .commands.eval_cmd import eval_command
    from .commands.fidelity_cmd import fidelity_command
    from .commands.normalize_cmd import normalize_command
    from .commands.teachers import score_command, teachers_app
    from .commands.vocab_cmd import vocab_command

    for name, command in [("vocab", vocab_command), ("distill", distill_command), ("eval", eval_command),
                          ("cache", cache_command), ("fidelity", fidelity_command), ("demo", demo_command),
                          ("ablate", ablate_command), ("normalize", normalize_command)]:
        app.command(name)(command)
    app.add_typer(teachers_app, name="teachers")
    app.command("score")(score_command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except MergekdError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished steps, shards and checkpoints are kept; rerun the same command "
                          "to resume", style="yellow", markup=False, soft_wrap=True)
        sys.exit(130)


def fail(exc: BaseException) -> None:
    """The one top-level handler: any mergekd error is one line on stderr (no traceback) and exit status 2.

    The message is printed verbatim (no rich markup, so ``[INST]`` in a message stays text) and never wrapped;
    a multi-line detail is joined into the same line with " | "."""
    text = " | ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    err_console.print(f"error: {text}", style="bold red", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
