"""``mergekd teachers list|show`` and ``mergekd score``."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table

from .options import model_options, require, teacher_runtime_options, validated, with_options

teachers_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="List and inspect teachers (built in, plugins, hf:/gguf: specs).")
console = Console()
err_console = Console(stderr=True)


@teachers_app.command("list")
def list_command() -> None:
    """Every registered teacher: family, size, tokenizer length, where it loads from, and whether its files
    are on this machine (installed = loads without network).

    Example: mergekd teachers list
    """
    from ..teachers import TeacherSpec, list_specs

    table = Table("name", "family", "params", "vocab", "source", "installed", title="mergekd teachers")
    for name, spec in list_specs():
        if not isinstance(spec, TeacherSpec):  # a broken plugin entry: one red row, the rest still listed
            table.add_row(name, "[red]error[/]", "", "", f"[red]{spec}[/]", "[red]no[/]")
            continue
        installed = spec.is_installed()
        table.add_row(spec.name, spec.family, spec.params or "?",
                      f"{spec.vocab_size:,}" if spec.vocab_size else "?", spec.location_label(),
                      "[green]yes[/]" if installed else "[red]no[/]")
    console.print(table)
    console.print("Inline specs need no registration: hf:FOLDER_OR_HUB_ID, gguf:FILE.gguf; options after '?', "
                  "e.g. smollm2-135m?max_length=512&dtype=bfloat16. Details: mergekd teachers show NAME")


class ShowOptions(BaseModel):
    """``mergekd teachers show NAME``: one positional argument."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a registered name, hf:PATH_OR_ID or gguf:FILE")


@teachers_app.command("show")
@with_options(model_options(ShowOptions, arguments=("name",)))
def show_command(**options) -> None:
    """Everything mergekd knows about one teacher without loading it.

    Example: mergekd teachers show gemma3-270m
    """
    from ..teachers import resolve_teacher
    from ..teachers.gguf_cache import cache_folder, existing_caches

    resolved = resolve_teacher(validated(ShowOptions, options, "teachers show").name)
    spec = resolved.spec
    installed = spec.is_installed()
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("name", resolved.name), ("family", spec.family), ("params", spec.params or "?"),
        ("vocab (tokenizer length)", f"{spec.vocab_size:,}" if spec.vocab_size else "? (read when loaded)"),
        ("source", spec.location_label()), ("licence", spec.licence or "?"),
        ("installed", "[green]yes[/]" if installed else "[red]no[/]"),
    ]
    if spec.tokenizer:
        rows.append(("tokenizer", f"{spec.tokenizer} (used instead of the one in the model files)"))
    if not installed and spec.install_hint:
        rows.append(("install", spec.install_hint))
    if spec.source == "gguf":
        caches = existing_caches(spec.name)
        local = Path(spec.location).expanduser() if isinstance(spec.location, str) else None
        if not caches and local is not None and local.is_file():
            caches_text = f"not built yet (first load writes {cache_folder(spec.name, local)})"
        else:
            caches_text = "\n".join(str(c) for c in caches) or "not built yet (the first load builds it)"
        rows.append(("safetensors cache", caches_text))
    opts = resolved.options.model_dump()
    rows.append(("options", ", ".join(f"{k}={v}" for k, v in opts.items())))
    if spec.description:
        rows.append(("description", spec.description))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


class RichScoreProgress:
    """:class:`mergekd.score.ScoreProgress` drawn as a rich bar in bytes (on stderr, so stdout stays clean)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: TaskID | None = None

    def message(self, text: str) -> None:
        self.progress.console.log(text)

    def start(self, label: str, total_bytes: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(label, total=total_bytes)

    def advance(self, n_bytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n_bytes)


class ScoreOptions(BaseModel):
    """``mergekd score``'s own options (the teacher-runtime group is shared; ``--device`` and ``--batch-size`` are
    kept as old spellings). Chunk and byte limits are checked by :func:`mergekd.score.load_score_texts`."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="text to score, a data spec (a .txt/.jsonl/.parquet/... file, a glob of "
                                  "shards, a save_to_disk folder or hub:id; see docs/data.md)")
    fit_data: str | None = Field(None, description="text the mixer is fit on (a data spec; required by "
                                                   "learned/gated); never the scored --data")
    mix: str = Field("linear", description="mixer spec (linear = uniform weights, product, min-ce, softmax-ce, "
                                           "learned, gated, product:weights=1;2) or 'none'")
    json_out: Path | None = Field(None, description="also write the results as JSON here (atomic)")
    max_bytes: int | None = Field(None, description="score only the first N bytes (and fit on ≤ N bytes)")
    chunk_bytes: int = Field(4096, description="documents are scored in independent chunks of this many bytes")


@with_options(
    teacher_runtime_options(flags={"teacher_device": ("--teacher-device", "--device"),
                                   "teacher_batch_size": ("--teacher-batch-size", "--batch-size")}),
    model_options(ScoreOptions, flags={"json_out": ("--json",)}))
def score_command(**options) -> None:
    """Bits per byte of --data under each teacher and under their mixture (teachers load one at a time).

    Example: mergekd score --teachers smollm2-135m,gemma3-270m --data botchan.txt --json score.json
    """
    (teachers,) = require(options, "teachers")
    opts = validated(ScoreOptions, options, "score")
    from ..io import write_json
    from ..score import score

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        report = score(teachers, opts.data, fit_data=opts.fit_data,
                       mix=None if opts.mix.strip().lower() == "none" else opts.mix, max_bytes=opts.max_bytes,
                       chunk_bytes=opts.chunk_bytes, device=options["teacher_device"],
                       batch_size=options["teacher_batch_size"], byte_rule=options["byte_rule"],
                       max_length=options["teacher_max_length"], progress=RichScoreProgress(bar))
    _print_score(report)
    if opts.json_out is not None:
        console.print(f"wrote {write_json(opts.json_out, report.to_json(), indent=2)}")


def _print_score(report) -> None:
    """The per-teacher table (and the mixture's row and weights) on stdout."""
    table = Table(title=f"{report.data}: {report.bytes:,} bytes in {report.chunks} chunks")
    table.add_column("teacher", no_wrap=True)
    for header in ("vocab", "bytes", "BPB", "BPB common", "load s", "score s"):
        table.add_column(header, justify="right")
    for t in report.teachers:
        table.add_row(t.name, f"{t.vocab_size:,}", f"{t.bytes_scored:,}", f"{t.bpb:.4f}", f"{t.bpb_common:.4f}",
                      f"{t.load_seconds:.1f}", f"{t.score_seconds:.1f}")
    if report.mixture is not None:
        m = report.mixture
        table.add_row(f"[bold]mix {m.name}[/]", "", f"{m.bytes_scored:,}", f"[bold]{m.bpb:.4f}[/]", "", "", "")
    console.print(table)
    console.print(f"BPB common: over the {report.common_bytes:,} bytes every teacher predicts.")
    if report.mixture is not None and report.mixture.weights:
        weights = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in report.mixture.weights.items())
        console.print(f"mixture weights: {weights}")
