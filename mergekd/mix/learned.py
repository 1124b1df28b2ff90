"""``learned``: one global weight per teacher, fitted by EM to minimise the linear pool's NLL on fit data.

Why global weights first: they are the cheapest mixer that is guaranteed (on the fit data) to be no worse than
the best single teacher and than uniform weights — both are points of the simplex the optimum beats — and they
are the starting point of ``gated``. Fit them on text you will not score.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ..errors import EmptyTextError
from .base import MIXERS, Mixer, MixerConfig, per_teacher
from .em import fit_mixture_weights, mixture_nll
from .inputs import LN2, NEG_INF, MixInputs, realised_logprobs
from .pool import linear_pool


class LearnedConfig(MixerConfig):
    max_iter: int = Field(2000, ge=1, description="most EM updates")
    tol: float = Field(1e-10, ge=0, description="stop when an update lowers the NLL by less (nats per byte)")


def fit_rows(realised: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """Rows usable for a global-weight fit: every teacher defined and at least one gives the byte mass > 0."""
    all_defined = masks.all(0)
    informative = realised.max(0).values > NEG_INF
    rows = all_defined & informative
    counts = {"rows": int(rows.sum()), "rows_total": int(masks.shape[1]),
              "rows_missing_a_teacher": int((~all_defined & masks.any(0)).sum()),
              "rows_impossible_for_all": int((all_defined & ~informative).sum())}
    return rows, counts


@MIXERS.register("learned", aliases=("em", "learned-linear"))
class LearnedMixer(Mixer):
    """p(c) = Σ_k w_k p_k(c), w = argmin of the fit data's NLL (EM), renormalised over the teachers defined at
    a row. EM runs on the rows where all teachers are defined, where the pool is exactly the fitted mixture."""

    name = "learned"
    Config = LearnedConfig
    needs_fit = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.weights: torch.Tensor | None = None
        self.fit_report: dict[str, Any] = {}

    def _fit(self, logprobs, masks, actual, features) -> None:
        realised = realised_logprobs(logprobs, masks, actual, teacher_names=self.teacher_names).cpu()
        rows, counts = fit_rows(realised, masks.cpu())
        if counts["rows"] == 0:
            raise EmptyTextError(f"mixer 'learned' found no fit rows where every teacher is defined and predicts "
                                 f"the byte ({counts}); give more fit text")
        sub = realised[:, rows]
        result = fit_mixture_weights(sub, max_iter=self.config.max_iter, tol=self.config.tol)
        self.weights = result.weights
        k = sub.shape[0]
        singles = (-sub.mean(1) / LN2)
        uniform = float(mixture_nll(sub, torch.full((k,), -math.log(k), dtype=torch.float64)).mean()) / LN2
        self.fit_report = {**counts, "bits_per_byte": result.nll_bits, "uniform_bits_per_byte": uniform,
                           "teacher_bits_per_byte": singles.tolist(), "iterations": result.iterations,
                           "converged": result.converged}

    def _mix(self, inputs: MixInputs, features: torch.Tensor | None):
        log_w = self.weights.to(inputs.logprobs.device).log()
        return linear_pool(inputs.logprobs, inputs.masks, log_w, fallback_uniform=True)

    def _describe(self) -> dict[str, Any]:
        if self.weights is None:
            return {"weights": None, "fitted": False}
        report = dict(self.fit_report)
        if "teacher_bits_per_byte" in report:
            report["teacher_bits_per_byte"] = per_teacher(self, report["teacher_bits_per_byte"])
        return {"weights": per_teacher(self, self.weights), "fit": report}

    def _params(self) -> dict[str, Any]:
        return {"weights": self.weights, "fit_report": self.fit_report}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.weights = params["weights"].to(torch.float64) if params.get("weights") is not None else None
        self.fit_report = dict(params.get("fit_report") or {})
