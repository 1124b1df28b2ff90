"""Distribution-matching losses between the teachers' byte mixture and the student's byte head.

Registered by name in ``LOSSES`` (same idiom as teachers and mixers; plugins use the entry-point group
``mergekd.losses``). Each takes head logits [R, 257] and teacher log-probs [R, 257] and returns a per-row loss [R].

Teacher rows contain exact zeros (−inf log-probs): column 256 inside a text, bytes no teacher token can start
with. Forward KL handles them exactly (0·log 0 = 0). Reverse KL would be infinite wherever the head puts mass
on such an outcome, so it compares against the teacher smoothed with ``epsilon`` of uniform mass; JSD is finite.

Temperature T softens both sides (teacher p^(1/T) renormalised, head softmax(z/T)) and the loss is multiplied
by T² so gradient magnitudes stay comparable across temperatures (Hinton et al. 2015).
"""

from __future__ import annotations

import math

import torch

from .registry import Registry

LOSSES: Registry = Registry("losses", "mergekd.losses")


def _soften(head_logits: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float):
    log_q = torch.log_softmax(head_logits.float() / temperature, -1)
    log_p = torch.log_softmax(teacher_logprobs.float() / temperature, -1) if temperature != 1.0 else teacher_logprobs.float()
    return log_q, log_p


def _xlogy_diff(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) with 0·anything = 0."""
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


@LOSSES.register("forward-kl", aliases=("kl", "fkl"))
def forward_kl(head_logits, teacher_logprobs, temperature: float = 1.0, epsilon: float = 1e-6):
    """KL(teacher ‖ head): mode-covering; the default (BLD distils with forward KL)."""
    log_q, log_p = _soften(head_logits, teacher_logprobs, temperature)
    return _xlogy_diff(log_p.exp(), log_p, log_q) * temperature ** 2


@LOSSES.register("reverse-kl", aliases=("rkl",))
def reverse_kl(head_logits, teacher_logprobs, temperature: float = 1.0, epsilon: float = 1e-6):
    """KL(head ‖ teacher): mode-seeking (GKD's on-policy choice); teacher smoothed with ``epsilon`` uniform."""
    log_q, log_p = _soften(head_logits, teacher_logprobs, temperature)
    smooth = torch.logaddexp(log_p + math.log1p(-epsilon), torch.full_like(log_p, math.log(epsilon / log_p.shape[-1])))
    return _xlogy_diff(log_q.exp(), log_q, smooth) * temperature ** 2


@LOSSES.register("jsd")
def jsd(head_logits, teacher_logprobs, temperature: float = 1.0, epsilon: float = 1e-6, beta: float = 0.5):
    """Generalised Jensen–Shannon divergence with mixing weight ``beta`` (GKD); finite without smoothing."""
    log_q, log_p = _soften(head_logits, teacher_logprobs, temperature)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return (beta * _xlogy_diff(log_p.exp(), log_p, log_m) + (1 - beta) * _xlogy_diff(log_q.exp(), log_q, log_m)) \
        * temperature ** 2
