"""``mergekd demo``: run the offline end-to-end demo and print its table (see :mod:`mergekd.demo`)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..assets import TEXTS
from ..demo import DemoConfig
from .options import model_options, teacher_runtime_options, validated, with_options

_DEMO = DemoConfig()  # the defaults live in DemoConfig (the measured configuration); the options only show them
_DEMO_TEACHERS = ",".join(_DEMO.teachers)


class DemoOptions(BaseModel):
    """``mergekd demo``'s own options (the teacher-runtime group is shared; the demo's teachers and window default
    to DemoConfig's). Byte counts are checked by :meth:`DemoConfig.check`, whose messages name the fix."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(_DEMO.out, description="output folder (data, cache, runs, demo.json, demo.md)")
    student: str = Field(_DEMO.student, description="student spec (a fresh model with a third tokenizer)")
    text: str = Field(_DEMO.text, description=f"offline public-domain text: {', '.join(sorted(TEXTS))}")
    train_bytes: int = Field(_DEMO.train_bytes, description="training bytes (the start of the text)")
    heldout_bytes: int = Field(_DEMO.heldout_bytes, description="held-out bytes (the end of the text)")
    steps: int = Field(_DEMO.steps, description="optimizer steps of each student")
    mix: str = Field(_DEMO.mix, description="mixer spec, e.g. linear, learned, product")
    kl_weight: float = Field(_DEMO.kl_weight, description="weight of KL(mixture ‖ byte head)")
    byte_ce_weight: float = Field(_DEMO.byte_ce_weight, description="weight of the byte head's CE on the text's "
                                                                    "bytes")
    trie_kl_weight: float = Field(_DEMO.trie_kl_weight, description="weight of KL(mixture ‖ the byte rows of the "
                                                                    "student's own token softmax) at every byte of "
                                                                    "its tokens")
    trie_kl_depth: int = Field(_DEMO.trie_kl_depth, description="byte offsets per student token the trie term covers "
                                                                "(1 = first byte only, 0 = all)")
    seed: int = Field(_DEMO.seed, description="seed of both student runs")
    quiet: bool = Field(False, description="no progress bars")
    json_out: Path | None = Field(None, description="also copy the report here")


@with_options(teacher_runtime_options(), model_options(DemoOptions, flags={"json_out": ("--json",)}))
def demo_command(**options) -> None:
    """Distil SmolLM2-135M + Gemma-3-270m into a fresh student, offline, and compare with CE-only (≈8 min on
    2 CPU cores; rerun to resume).

    Example: mergekd demo --out runs/demo
    """
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                               TransferSpeedColumn)

    from ..demo import run_demo
    from .teachers import RichScoreProgress

    console = Console()
    opts = validated(DemoOptions, options, "demo")
    cfg = _demo_config(opts, options)

    @contextmanager
    def score_bar():
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            yield RichScoreProgress(bar)

    report = run_demo(cfg, log=lambda m: console.print(f"[bold cyan]{m}"), show_progress=not opts.quiet,
                      score_progress=None if opts.quiet else score_bar)
    _print_demo(report, opts, console)
    if opts.json_out is not None:
        from ..io import write_json

        write_json(opts.json_out, report, indent=2)


def _print_demo(report: dict, opts: DemoOptions, console) -> None:
    """The held-out BPB table and the one-line verdict."""
    from rich.table import Table

    table = Table(title=f"held-out bits per byte ({report['heldout_bytes']:,} bytes of {opts.text}; lower is "
                        "better)")
    table.add_column("model", no_wrap=True)
    table.add_column("byte rule", justify="right")
    table.add_column("own tokens", justify="right")
    for row in report["rows"]:
        token = f"{row['token_bpb']:.4f}" if row.get("token_bpb") is not None else "—"
        table.add_row(row["model"], f"{row['byte_bpb']:.4f}", token)
    console.print(table)
    verdict = "beats" if report["distilled_beats_ce_only"] else "does NOT beat"
    console.print(f"distilled student {verdict} CE-only by {report['gain_bits_per_byte']:+.4f} bits/byte; "
                  f"{report['seconds']['total']:.0f} s in all; report: {opts.out / 'demo.json'}, "
                  f"{opts.out / 'demo.md'}")


def _demo_config(opts: DemoOptions, options: dict) -> DemoConfig:
    """The run's DemoConfig: the demo's options, the teachers (default: the demo's two) and the runtime flags given
    (the others keep DemoConfig's defaults, e.g. its 512-token window)."""
    teachers = options["teachers"] or _DEMO_TEACHERS
    runtime = {k: options[k] for k in ("teacher_device", "teacher_max_length", "teacher_batch_size", "byte_rule")
               if options[k] is not None}
    return DemoConfig(**opts.model_dump(exclude={"quiet", "json_out"}),
                      teachers=[t.strip() for t in teachers.split(",") if t.strip()], **runtime)
