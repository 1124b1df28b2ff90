"""Per-row gate features: what a gate can know about each teacher at a byte without seeing the byte.

Why these: a teacher's confidence (entropy, top probability) and its agreement with the others (KL to their
average) are the cheap signals that predict which teacher is right at a row; they are computed from the
distributions alone, so the gate works the same at fit time and at distillation time. A caller may append
its own per-row features (e.g. the student's hidden state) via ``features=``.

Layout: [R, 4·K] = for each teacher k in order: entropy (nats), log max-prob, KL(p_k ‖ mean of present
teachers) (nats, ≤ log K), present (0/1). An absent teacher's first three features are 0.
"""

from __future__ import annotations

import torch

FEATURES_PER_TEACHER = 4


def teacher_features(logprobs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """float64 [R, 4K] from prepared float64 log-probs [K, R, 257] (-inf rows where undefined) and masks [K, R]."""
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    p = logprobs.exp()
    entropy = -torch.where(p > 0, p * logprobs, zero).sum(-1)
    log_max = logprobs.max(-1).values
    count = masks.sum(0).clamp_min(1).to(logprobs.dtype)
    log_mean = torch.logsumexp(logprobs, 0) - count.log().unsqueeze(-1)  # log of the present teachers' average
    kl = torch.where(p > 0, p * (logprobs - log_mean.unsqueeze(0)), zero).sum(-1)
    stacked = torch.stack([entropy, log_max, kl], -1)  # [K, R, 3]
    stacked = torch.where(masks.unsqueeze(-1), stacked, zero)
    present = masks.unsqueeze(-1).to(logprobs.dtype)
    feats = torch.cat([stacked, present], -1)  # [K, R, 4]
    return feats.permute(1, 0, 2).reshape(masks.shape[1], -1)


def feature_names(teacher_names: list[str]) -> list[str]:
    return [f"{t}.{f}" for t in teacher_names for f in ("entropy", "log_max_prob", "kl_to_mean", "present")]

