"""Fixed-weight mixers: ``linear`` (and ``uniform``) and ``product`` (log-linear pool).

Why both pools: the linear pool Σ w_k p_k keeps every outcome any teacher allows (safe: its NLL is never worse
than the worst teacher's), the product pool Π p_k^w_k / Z sharpens towards outcomes the teachers agree on (a
"logarithmic opinion pool": better when teachers are individually under-confident, dangerous when one is
confidently wrong). Neither needs fitting; weights are options.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator

from ..errors import ConfigError
from .base import MIXERS, Mixer, MixerConfig, per_teacher
from .inputs import MixInputs
from .pool import linear_pool, product_pool


class WeightsConfig(MixerConfig):
    weights: tuple[float, ...] | None = Field(
        None, description="one non-negative weight per teacher, in teacher order, e.g. 0.3;0.7 (unset = equal)")

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return value
        if len(value) == 0:
            raise ValueError("needs one weight per teacher, e.g. weights=0.3;0.7")
        if any(not math.isfinite(w) or w < 0 for w in value):
            raise ValueError("weights must be finite and non-negative")
        if sum(value) <= 0:
            raise ValueError("weights must not all be zero; give at least one teacher a positive weight")
        return value


class _FixedWeights(Mixer):
    """Shared by linear and product: the ``weights`` option, checked against the number of teachers."""

    Config = WeightsConfig

    def _check_teacher_count(self, k: int, refit: bool = False) -> None:
        super()._check_teacher_count(k, refit)
        weights = self.config.weights
        if weights is not None and len(weights) != k:
            raise ConfigError(f"mix option 'weights' of mixer {self.name!r} has {len(weights)} values but there "
                              f"are {k} teachers; give one weight per teacher, in teacher order")

    def weights(self, k: int) -> torch.Tensor:
        """Normalised weights [k] float64 (equal when the option is unset)."""
        given = self.config.weights
        w = torch.tensor(given, dtype=torch.float64) if given else torch.ones(k, dtype=torch.float64)
        return w / w.sum()

    def _log_weights(self, inputs: MixInputs) -> torch.Tensor:
        return self.weights(inputs.num_teachers).to(inputs.logprobs.device).log()

    def _describe(self) -> dict[str, Any]:
        k = len(self.config.weights) if self.config.weights else self.num_teachers
        return {"weights": per_teacher(self, self.weights(k))} if k else {"weights": "equal"}


@MIXERS.register("linear")
class LinearMixer(_FixedWeights):
    """p(c) = Σ_k w_k p_k(c) / Σ_k w_k over the teachers defined at the row. Rows where only zero-weight
    teachers are defined are undefined (mask False): the weights say those teachers have no say."""

    name = "linear"

    def _mix(self, inputs: MixInputs, features: torch.Tensor | None):
        return linear_pool(inputs.logprobs, inputs.masks, self._log_weights(inputs), fallback_uniform=False)


class UniformConfig(MixerConfig):
    pass


@MIXERS.register("uniform", aliases=("mean", "average"))
class UniformMixer(LinearMixer):
    """The linear pool with equal weights: the baseline every learned mixer must beat."""

    name = "uniform"
    Config = UniformConfig

    def weights(self, k: int) -> torch.Tensor:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)

    def _check_teacher_count(self, k: int, refit: bool = False) -> None:
        Mixer._check_teacher_count(self, k, refit)

    def _describe(self) -> dict[str, Any]:
        return {"weights": per_teacher(self, self.weights(self.num_teachers))} if self.num_teachers else \
            {"weights": "equal"}


@MIXERS.register("product", aliases=("log-linear", "geometric"))
class ProductMixer(_FixedWeights):
    """p(c) ∝ Π_k p_k(c)^w_k with w normalised over the teachers defined at the row (weighted geometric mean).

    Rows where the weighted teachers' supports are disjoint (every outcome vetoed) fall back to the linear pool
    with the same weights; ``describe()["fallback_rows"]`` counts them.
    """

    name = "product"

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.rows_seen = 0
        self.fallback_rows = 0

    def _mix(self, inputs: MixInputs, features: torch.Tensor | None):
        mixed, defined, fallback = product_pool(inputs.logprobs, inputs.masks, self._log_weights(inputs))
        self.rows_seen += int(defined.sum())
        self.fallback_rows += int(fallback.sum())
        return mixed, defined

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "rows_seen": self.rows_seen, "fallback_rows": self.fallback_rows}

    def _params(self) -> dict[str, Any]:
        return {"rows_seen": self.rows_seen, "fallback_rows": self.fallback_rows}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.rows_seen = int(params.get("rows_seen", 0))
        self.fallback_rows = int(params.get("fallback_rows", 0))
