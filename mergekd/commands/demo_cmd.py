"""``mergekd demo``: run the offline end-to-end demo and print its table (see :mod:`mergekd.demo`)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ..demo import DEFAULT_STUDENT, DemoConfig


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), help="output folder (data, cache, runs, demo.json, demo.md)"),
    teachers: str = typer.Option("smollm2-135m,gemma3-270m", help="comma-separated teacher specs"),
    student: str = typer.Option(DEFAULT_STUDENT, help="student spec (a fresh model with a third tokenizer)"),
    text: str = typer.Option("botchan", help="offline public-domain text: botchan, hamlet, lear, tempest"),
    train_bytes: int = typer.Option(32_000, help="training bytes (the start of the text)"),
    heldout_bytes: int = typer.Option(8_000, help="held-out bytes (the end of the text)"),
    steps: int = typer.Option(200, help="optimizer steps of each student"),
    mix: str = typer.Option("linear", help="mixer spec, e.g. linear, learned, product"),
    kl_weight: float = typer.Option(0.0, help="weight of KL(mixture ‖ byte head)"),
    byte_ce_weight: float = typer.Option(0.0, help="weight of the byte head's CE on the text's bytes"),
    trie_kl_weight: float = typer.Option(3.0, help="weight of KL(mixture ‖ the byte rows of the student's own "
                                                   "token softmax) at every byte of its tokens"),
    trie_kl_depth: int = typer.Option(0, help="byte offsets per student token the trie term covers (1 = first "
                                              "byte only, 0 = all)"),
    seed: int = typer.Option(0, help="seed of both student runs"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also copy the report here"),
) -> None:
    """Distil SmolLM2-135M + Gemma-3-270m into a fresh student, offline, and compare with CE-only (≈8 min on
    2 CPU cores; rerun to resume).

    Example: mergekd demo --out runs/demo
    """
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                               TransferSpeedColumn)
    from rich.table import Table

    from .teachers import RichScoreProgress

    console = Console()
    cfg = DemoConfig(out=out, teachers=[t.strip() for t in teachers.split(",") if t.strip()], student=student,
                     text=text, train_bytes=train_bytes, heldout_bytes=heldout_bytes, steps=steps, mix=mix,
                     kl_weight=kl_weight, byte_ce_weight=byte_ce_weight,
                     trie_kl_weight=trie_kl_weight, trie_kl_depth=trie_kl_depth, seed=seed)
    from ..demo import run_demo

    @contextmanager
    def score_bar():
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            yield RichScoreProgress(bar)

    report = run_demo(cfg, log=lambda m: console.print(f"[bold cyan]{m}"), show_progress=not quiet,
                      score_progress=None if quiet else score_bar)
    table = Table(title=f"held-out bits per byte ({report['heldout_bytes']:,} bytes of {text}; lower is better)")
    table.add_column("model", no_wrap=True)
    table.add_column("byte rule", justify="right")
    table.add_column("own tokens", justify="right")
    for row in report["rows"]:
        token = f"{row['token_bpb']:.4f}" if row.get("token_bpb") is not None else "—"
        table.add_row(row["model"], f"{row['byte_bpb']:.4f}", token)
    console.print(table)
    verdict = "beats" if report["distilled_beats_ce_only"] else "does NOT beat"
    console.print(f"distilled student {verdict} CE-only by {report['gain_bits_per_byte']:+.4f} bits/byte; "
                  f"{report['seconds']['total']:.0f} s in all; report: {out / 'demo.json'}, {out / 'demo.md'}")
    if json_out is not None:
        from ..io import write_json

        write_json(json_out, report, indent=2)
