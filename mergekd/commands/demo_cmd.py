"""``mergekd demo``: run the offline end-to-end demo and print its table (see :mod:`mergekd.demo`)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ..demo import DEFAULT_STUDENT, DemoConfig
from .options import plain, teacher_runtime_options, with_options


@with_options(
    teacher_runtime_options(),
    [plain("out", Path("runs/demo"), "--out", help="output folder (data, cache, runs, demo.json, demo.md)"),
     plain("student", DEFAULT_STUDENT, "--student", help="student spec (a fresh model with a third tokenizer)"),
     plain("text", "botchan", "--text", help="offline public-domain text: botchan, hamlet, lear, tempest"),
     plain("train_bytes", 32_000, "--train-bytes", help="training bytes (the start of the text)"),
     plain("heldout_bytes", 8_000, "--heldout-bytes", help="held-out bytes (the end of the text)"),
     plain("steps", 200, "--steps", help="optimizer steps of each student"),
     plain("mix", "linear", "--mix", help="mixer spec, e.g. linear, learned, product"),
     plain("kl_weight", 0.0, "--kl-weight", help="weight of KL(mixture ‖ byte head)"),
     plain("byte_ce_weight", 0.0, "--byte-ce-weight", help="weight of the byte head's CE on the text's bytes"),
     plain("trie_kl_weight", 3.0, "--trie-kl-weight", help="weight of KL(mixture ‖ the byte rows of the student's "
                                                          "own token softmax) at every byte of its tokens"),
     plain("trie_kl_depth", 0, "--trie-kl-depth", help="byte offsets per student token the trie term covers "
                                                       "(1 = first byte only, 0 = all)"),
     plain("seed", 0, "--seed", help="seed of both student runs"),
     plain("quiet", False, "--quiet", help="no progress bars"),
     plain("json_out", None, "--json", help="also copy the report here", annotation=Optional[Path])])
def demo_command(**options) -> None:
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
    runtime = {k: options.pop(k) for k in ("teachers", "teacher_device", "teacher_max_length",
                                           "teacher_batch_size", "byte_rule")}
    quiet, json_out, out, text = options.pop("quiet"), options.pop("json_out"), options["out"], options["text"]
    teachers = runtime["teachers"] or "smollm2-135m,gemma3-270m"
    given = {k: v for k, v in runtime.items() if k != "teachers" and v is not None}
    cfg = DemoConfig(**options, teachers=[t.strip() for t in teachers.split(",") if t.strip()], **given)
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
