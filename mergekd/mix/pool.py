"""The two pooling kernels every mixer reduces to: the linear pool and the log-linear (product) pool.

Why two kernels and not six: each mixer only decides *weights* (fixed, per sequence, fitted, per row); how
weighted distributions are combined is one of two formulas. Keeping the arithmetic here means -inf, masks and
renormalisation are handled (and tested) once.

All inputs come from :func:`mergekd.mix.inputs.prepare`: float64 log-probs [K, N, 257], rows where a teacher
is undefined are all -inf. Weights are given in log space, [K] or [K, N]; -inf means weight 0.
"""

from __future__ import annotations

import torch

from .inputs import NEG_INF


def present_log_weights(log_weights: torch.Tensor, masks: torch.Tensor, *,
                        fallback_uniform: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log weights renormalised over the teachers present at each row → ([K, N], defined [N]).

    A teacher that is undefined at a row drops out and the others' weights are rescaled to sum to 1. If every
    present teacher has weight 0 at a row, ``fallback_uniform`` decides: True → weight the present teachers
    equally (data-driven mixers: a row must not vanish because a fitted weight underflowed); False → the row
    is undefined (fixed mixers: the user gave those teachers no say).
    """
    k, n = masks.shape
    lw = log_weights.to(torch.float64)
    lw = lw.unsqueeze(1).expand(k, n) if lw.dim() == 1 else lw
    lw = torch.where(masks, lw, NEG_INF)
    norm = torch.logsumexp(lw, 0)
    if fallback_uniform:
        stuck = (norm == NEG_INF) & masks.any(0)
        if bool(stuck.any()):
            lw = torch.where(stuck.unsqueeze(0) & masks, 0.0, lw)
            norm = torch.logsumexp(lw, 0)
    defined = norm > NEG_INF
    lw = lw - torch.where(defined, norm, 0.0).unsqueeze(0)
    return lw, defined


def linear_pool(logprobs: torch.Tensor, masks: torch.Tensor, log_weights: torch.Tensor, *,
                fallback_uniform: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log Σ_k w_kn p_kn over present teachers (weights renormalised per row) → ([N, 257], defined [N]).

    A mixture of normalised distributions is normalised; rows stay exact in float64 because log-sum-exp never
    leaves log space. -inf weights or log-probs contribute nothing (exp(-inf) = 0), never NaN.
    """
    lw, defined = present_log_weights(log_weights, masks, fallback_uniform=fallback_uniform)
    mixed = torch.logsumexp(lw.unsqueeze(-1) + logprobs, 0)
    return mixed, defined


def product_pool(logprobs: torch.Tensor, masks: torch.Tensor, log_weights: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised weighted geometric mean Π_k p_kn^w_kn / Z_n over present teachers → (mixed, defined, fallback).

    ``w`` is renormalised over the present teachers of each row (so a lone teacher is returned unchanged). A
    teacher with w_k > 0 that gives an outcome probability 0 vetoes it (0^w = 0); a teacher with weight 0
    contributes nothing, not 0·(-inf) = NaN. If the vetoes leave no outcome with mass (the present teachers'
    supports are disjoint, Z_n = 0), the log-linear pool is undefined; the row falls back to the linear pool
    with the same weights, and ``fallback`` [N] marks those rows so callers can report how often it happened.
    """
    lw, defined = present_log_weights(log_weights, masks, fallback_uniform=False)
    w = lw.exp().unsqueeze(-1)  # [K, N, 1], 0 where absent or weight 0
    terms = torch.where(w > 0, w * logprobs, torch.zeros((), dtype=logprobs.dtype, device=logprobs.device))
    pooled = terms.sum(0)  # [N, 257]; -inf where a weighted teacher has probability 0
    norm = torch.logsumexp(pooled, -1)
    fallback = defined & (norm == NEG_INF)
    mixed = pooled - torch.where(norm > NEG_INF, norm, 0.0).unsqueeze(-1)
    if bool(fallback.any()):
        lin = torch.logsumexp(lw.unsqueeze(-1) + logprobs, 0)
        mixed = torch.where(fallback.unsqueeze(-1), lin, mixed)
    return mixed, defined, fallback


def normalise_rows(mixed: torch.Tensor, defined: torch.Tensor) -> torch.Tensor:
    """Subtract each defined row's log-sum-exp (float64 rounding clean-up); undefined rows become NaN.

    NaN, not some filler distribution, in undefined rows follows the byte core's convention: a caller that
    forgets ``mixed_mask`` gets a loud NaN loss instead of silently training towards an invented target.
    """
    lse = torch.logsumexp(mixed, -1, keepdim=True)
    out = mixed - torch.where(defined.unsqueeze(-1), lse, 0.0)
    return torch.where(defined.unsqueeze(-1), out, float("nan"))
