"""``mergekd ablate CONFIG.yaml``: run an ablation grid (see :mod:`mergekd.ablate`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .options import model_options, validated, with_options


class AblateOptions(BaseModel):
    """``mergekd ablate CONFIG``: the grid lives in the YAML file; the options say where results go and how much
    is done and shown."""

    model_config = ConfigDict(extra="forbid")

    config: Path = Field(description="ablation YAML: base, grid, cells, seeds, cache, teacher_eval")
    out: Path | None = Field(None, description="ablation folder (default runs/ablate-<config name>)")
    dry_run: bool = Field(False, description="validate every cell (settings, mixer, teacher and student specs, data "
                                             "files) and list the cells; load and write nothing")
    quiet: bool = Field(False, description="no progress bars (the per-cell lines stay)")


@with_options(model_options(AblateOptions, arguments=("config",)))
def ablate_command(**options) -> None:
    """Distil every cell of a grid (teacher subsets × mixers × loss weights × ...), score each on held-out text,
    and write results.csv / results.md / results.png. Rerunning skips finished cells, resumes interrupted ones
    (and ones given more steps), re-scores a cell whose only change is eval_data, and moves aside (never deletes)
    a cell folder or owned teacher cache whose training settings changed. With `seeds: [0, 1, 2]` in the config
    every cell trains once per seed and the reports give mean ± 95% interval over seeds.

    Example: mergekd ablate configs/ablations/small.yaml --out runs/ablate-small
    """
    from rich.console import Console

    from ..ablate import run_ablation

    opts = validated(AblateOptions, options, "ablate")
    out = opts.out if opts.out is not None else Path("runs") / f"ablate-{opts.config.stem}"
    run_ablation(opts.config, out, console=Console(), show_progress=not opts.quiet, dry_run=opts.dry_run)
