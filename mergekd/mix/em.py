"""Maximum-likelihood mixture weights by expectation–maximisation.

Why EM: for a linear pool with fixed components, the NLL -Σ_n log Σ_k w_k p_kn is convex in w on the simplex,
and the EM update w_k ← mean_n [w_k p_kn / Σ_j w_j p_jn] never increases it (it is the classic mixture-weight
EM with the components held fixed). There is no learning rate to tune, iterates stay on the simplex, and
only the realised log-probs [K, R] are needed, not the full distributions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import EmptyTextError
from .inputs import LN2, NEG_INF


@dataclass
class EMResult:
    weights: torch.Tensor  # float64 [K], on the simplex
    nll_bits: float  # mean NLL per row at ``weights``, bits
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list)  # mean NLL (bits) before each update, then at the end


def mixture_nll(realised: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Per-row NLL (nats) of the linear pool: -log Σ_k w_k p_k(actual_n). ``realised`` is [K, R] log p."""
    return -torch.logsumexp(log_weights.view(-1, 1) + realised, 0)


def fit_mixture_weights(realised: torch.Tensor, *, max_iter: int = 2000, tol: float = 1e-10,
                        init: torch.Tensor | None = None) -> EMResult:
    """EM for the weights of a K-component linear pool on rows [K, R] of realised log-probs (float64).

    Rows where every teacher gives the realised outcome probability 0 have infinite NLL for every w, carry no
    information about w, and must be removed by the caller (this function refuses them). Stops when one
    update lowers the mean NLL by less than ``tol`` nats per row, or after ``max_iter`` updates.
    """
    realised = realised.to(torch.float64)
    k, r = realised.shape
    if r == 0:
        raise EmptyTextError("no rows to fit mixture weights on: the fit data has no row where every teacher is "
                             "defined (give more fit text)")
    if bool((realised.max(0).values == NEG_INF).any()):
        raise ValueError("fit_mixture_weights: drop rows where every teacher gives probability 0 first")
    w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=realised.device) if init is None \
        else (init.to(realised) / init.to(realised).sum())
    history: list[float] = []
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        joint = w.log().view(-1, 1) + realised  # [K, R]
        log_mix = torch.logsumexp(joint, 0)
        history.append(float(-log_mix.mean()) / LN2)
        w = torch.exp(joint - log_mix).mean(1)  # responsibilities averaged over rows
        w = w / w.sum()  # exact simplex despite rounding
        if len(history) > 1 and (history[-2] - history[-1]) * LN2 < tol:
            converged = True
            break
    final = float(mixture_nll(realised, w.log()).mean()) / LN2
    history.append(final)
    return EMResult(weights=w, nll_bits=final, iterations=iterations, converged=converged, history=history)
