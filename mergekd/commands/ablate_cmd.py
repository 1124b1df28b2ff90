"""``mergekd ablate CONFIG.yaml``: run an ablation grid (see :mod:`mergekd.ablate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def ablate_command(
    config: Path = typer.Argument(..., help="ablation YAML: base, grid, cells, seeds, cache, teacher_eval"),
    out: Optional[Path] = typer.Option(None, help="ablation folder (default runs/ablate-<config name>)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate every cell (settings, mixer, teacher and "
                                 "student specs, data files) and list the cells; load and write nothing"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars (the per-cell lines stay)"),
) -> None:
    """Distil every cell of a grid (teacher subsets × mixers × loss weights × ...), score each on held-out text,
    and write results.csv / results.md / results.png. Rerunning skips finished cells, resumes interrupted ones
    (and ones given more steps), re-scores a cell whose only change is eval_data, and moves aside (never deletes)
    a cell folder or owned teacher cache whose training settings changed. With `seeds: [0, 1, 2]` in the config
    every cell trains once per seed and the reports give mean ± 95% interval over seeds.

    Example: mergekd ablate configs/ablations/small.yaml --out runs/ablate-small
    """
    from rich.console import Console

    from ..ablate import run_ablation

    out = out if out is not None else Path("runs") / f"ablate-{config.stem}"
    run_ablation(config, out, console=Console(), show_progress=not quiet, dry_run=dry_run)
