"""``mergekd ablate``: a grid of distillation runs (teacher subsets × mixers × loss weights × ...) from one
teacher cache, each scored on held-out text, reported as a table, CSV, markdown and a plot.

    from mergekd.ablate import load_ablation, expand_cells, run_ablation
    result = run_ablation("configs/ablations/small.yaml", "runs/ablate-small")
    result.rows            # one record per (cell, seed) run: id, seed, bpb, bytes, final_loss, seconds, status
    result.table           # one row per cell: bpb (mean over seeds), bpb_sd, bpb_ci95_lo/hi, delta_vs_ce, ...
"""

from .config import AblationConfig, Cell, expand_cells, load_ablation, parse_ablation
from .run import AblationResult, Plan, make_plan, run_ablation

__all__ = ["AblationConfig", "AblationResult", "Cell", "Plan", "expand_cells", "load_ablation", "make_plan",
           "parse_ablation", "run_ablation"]
