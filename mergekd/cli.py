"""The ``mergekd`` command line (typer). Each command is small and delegates to a library function.

Errors that are the user's (``MergekdError``) print one red line and exit with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.table import Table

from .errors import MergekdError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distil several teachers with different tokenizers into one student, through bytes.")
console = Console(stderr=False)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """mergekd: distil several teachers with different tokenizers into one student, through bytes."""


@app.command("vocab")
def vocab_cmd(
    tokenizer: str = typer.Argument(..., help="offline tokenizer name (gpt2, qwen2.5, cl100k, mistral-v1, "
                                              "mistral-v3, smollm2, gemma3) or a local tokenizer folder"),
    text: str = typer.Option("Hello  world\n\t日本語 😀 <|endoftext|>", help="text to align"),
) -> None:
    """Show how a tokenizer's ids map to bytes, and how a text's tokens line up with its bytes.

    Example: mergekd vocab gemma3 --text "Hello world"
    """
    from .assets import load_tokenizer
    from .bytes import byte_vocab_for

    tok = load_tokenizer(tokenizer)
    vocab = byte_vocab_for(tok, tokenizer)
    specials = sum(b is None for b in vocab.token_bytes)
    console.print(f"[bold]{vocab.name}[/]: {len(vocab)} ids, scheme {vocab.scheme}, dummy prefix "
                  f"{'yes' if vocab.adds_dummy_prefix else 'no'}, {specials} special ids, eos {list(vocab.eos_ids)}")
    align = vocab.align(text)
    table = Table("token", "id", "bytes", "text span")
    for tid, start, length in zip(align.token_ids.tolist(), align.token_start.tolist(), align.token_len.tolist()):
        spelled = vocab.token_bytes[tid]
        span = "(special)" if spelled is None else f"[{max(start, 0)}, {start + length})"
        table.add_row(repr(tok.convert_ids_to_tokens(tid)), str(tid), repr(spelled), span)
    console.print(table)


def _register_training_commands() -> None:
    from .commands.train import distill_command, eval_command

    app.command("distill")(distill_command)
    app.command("eval")(eval_command)
    from .commands.cache_cmd import cache_command
    from .commands.fidelity_cmd import fidelity_command

    app.command("cache")(cache_command)
    app.command("fidelity")(fidelity_command)
    from .commands.demo_cmd import demo_command

    app.command("demo")(demo_command)
    from .commands.ablate_cmd import ablate_command

    app.command("ablate")(ablate_command)
    from .commands.normalize_cmd import normalize_command

    app.command("normalize")(normalize_command)


_register_training_commands()


def _register_teacher_commands() -> None:
    from .commands.teachers import score_command, teachers_app

    app.add_typer(teachers_app, name="teachers")
    app.command("score")(score_command)


_register_teacher_commands()


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
