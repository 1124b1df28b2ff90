"""Sequence-level mixers in the style of FuseLLM (Wan et al., 2024): weight teachers by how well each one
predicted *this* text.

Why per sequence: teachers differ by domain (code, languages); their cross-entropy on the text itself says
which one knows it. One call = one sequence (the distillation signal calls the mixer per text), and the
realised bytes ``actual`` must be passed.

CE_k = mean over the text's rows of -log2 p_k(actual), in bits per byte, taken over the rows where *every*
teacher defined somewhere in the text is defined (so all CEs are measured on the same bytes). If no row has
all of them, each CE uses that teacher's own rows. A teacher absent from the whole text gets no weight.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from .base import MIXERS, Mixer, MixerConfig, per_teacher
from .inputs import LN2, NEG_INF, MixInputs
from .pool import present_log_weights


def sequence_cross_entropy(inputs: MixInputs) -> torch.Tensor:
    """[K] bits per byte of each teacher on the text (see module docstring); +inf for absent teachers and for
    teachers that gave a realised byte probability 0."""
    lp, masks, actual = inputs.logprobs, inputs.masks, inputs.actual
    k, n = masks.shape
    realised = lp.gather(-1, actual.view(1, n, 1).expand(k, n, 1)).squeeze(-1)  # -inf where undefined
    present = masks.any(1)  # [K] teachers that appear in this text
    common = masks[present].all(0) if bool(present.any()) else torch.zeros(n, dtype=torch.bool, device=masks.device)
    rows = common.unsqueeze(0).expand(k, n) if bool(common.any()) else masks
    count = rows.sum(1)
    total = torch.where(rows, realised, 0.0).sum(1)
    ce = -total / count.clamp_min(1) / LN2
    return torch.where(present & (count > 0), ce, float("inf"))


def _count_weights(state: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    weights = weights.detach().double().cpu()
    return weights if state is None else state + weights


class _SequenceMixer(Mixer):
    """Running per-teacher summaries over the sequences mixed so far, for ``describe``."""

    needs_actual = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.sequences = 0
        self.weight_sum: torch.Tensor | None = None  # Σ over sequences of each teacher's sequence weight
        self.ce_sum: torch.Tensor | None = None  # Σ over sequences of finite CEs (bits per byte)
        self.ce_count: torch.Tensor | None = None

    def _sequence_log_weights(self, ce: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Log weights [K] or [K, N] from the teachers' CEs [K] (renormalised per row by the linear pool)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _sequence_log_weights")

    def _mix(self, inputs: MixInputs, features: torch.Tensor | None):
        ce = sequence_cross_entropy(inputs)
        log_w = self._sequence_log_weights(ce, inputs.masks)
        lw, defined = present_log_weights(log_w, inputs.masks, fallback_uniform=True)
        mixed = torch.logsumexp(lw.unsqueeze(-1) + inputs.logprobs, 0)  # the linear pool, weights per row
        if bool(defined.any()):  # summary: each teacher's mean weight over the text's defined rows
            self.sequences += 1
            self.weight_sum = _count_weights(self.weight_sum, lw[:, defined].exp().mean(1))
            finite = torch.isfinite(ce)
            self.ce_sum = _count_weights(self.ce_sum, torch.where(finite, ce, 0.0))
            self.ce_count = _count_weights(self.ce_count, finite.double())
        return mixed, defined

    def _describe(self) -> dict[str, Any]:
        if not self.sequences:
            return {"weights": "per sequence (no sequences mixed yet)", "sequences": 0}
        mean_ce = torch.where(self.ce_count > 0, self.ce_sum / self.ce_count.clamp_min(1), float("nan"))
        return {"weights": per_teacher(self, self.weight_sum / self.sequences), "weights_are": "mean over sequences",
                "mean_bits_per_byte": per_teacher(self, mean_ce), "sequences": self.sequences}

    def _params(self) -> dict[str, Any]:
        return {"sequences": self.sequences, "weight_sum": self.weight_sum, "ce_sum": self.ce_sum,
                "ce_count": self.ce_count}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.sequences = int(params.get("sequences", 0))
        self.weight_sum = params.get("weight_sum")
        self.ce_sum = params.get("ce_sum")
        self.ce_count = params.get("ce_count")


class MinCEConfig(MixerConfig):
    pass


@MIXERS.register("min-ce", aliases=("mince", "min-cross-entropy"))
class MinCEMixer(_SequenceMixer):
    """The teacher with the lowest CE on the text (ties → the earlier teacher). At a row where that teacher is
    undefined, the lowest-CE teacher defined there is used, so every row with any teacher stays defined."""

    name = "min-ce"
    Config = MinCEConfig

    def _sequence_log_weights(self, ce: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """[K, N]: log weight 0 for the best-ranked teacher defined at each row, -inf for every other one."""
        k, n = masks.shape
        order = torch.sort(ce, stable=True).indices  # +inf CEs (absent, or p = 0 on a byte) rank last
        rank = torch.empty(k, dtype=torch.long, device=ce.device)
        rank[order] = torch.arange(k, device=ce.device)
        score = torch.where(masks, (k - rank).unsqueeze(1), 0)  # > 0 exactly where defined
        chosen = score.argmax(0)  # [N]; rows with no teacher pick 0, which the mask then drops
        pick = torch.arange(k, device=ce.device).unsqueeze(1) == chosen.unsqueeze(0)
        return torch.where(pick, 0.0, NEG_INF).to(torch.float64)


class SoftmaxCEConfig(MixerConfig):
    temperature: float = Field(1.0, gt=0, description="softmax temperature in bits per byte (smaller = sharper)")


@MIXERS.register("softmax-ce", aliases=("softmaxce", "softmax-cross-entropy"))
class SoftmaxCEMixer(_SequenceMixer):
    """Linear pool with per-text weights w_k ∝ exp(-CE_k / T), CE in bits per byte on the text."""

    name = "softmax-ce"
    Config = SoftmaxCEConfig

    def _sequence_log_weights(self, ce: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(ce)
        if not bool(finite.any()):  # every teacher failed on some byte: nothing to prefer
            return torch.zeros_like(ce)
        return torch.where(finite, -ce / self.config.temperature, NEG_INF)
