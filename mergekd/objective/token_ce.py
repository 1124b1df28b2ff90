"""token_ce: the student's cross-entropy on the text's next tokens (the plain language-model loss)."""

from __future__ import annotations

import torch

from .base import TERMS, ObjectiveTerm
from .context import StepContext, per_example_mean


@TERMS.register("token_ce", aliases=("ce",))
class TokenCE(ObjectiveTerm):
    """Mean token NLL per example; the reference text's term, so it is off on on-policy batches."""

    name = "token_ce"
    uses_reference_text = True

    def per_example(self, ctx: StepContext):
        b = ctx.batch
        b_size, length, _ = ctx.logits.shape
        flat_targets = b.target_ids.reshape(-1)
        keep = flat_targets != -100
        nll = -ctx.token_logprobs().gather(1, flat_targets.clamp(min=0).unsqueeze(1)).squeeze(1)[keep]
        example = torch.arange(b_size, device=ctx.logits.device).repeat_interleave(length)[keep]
        return per_example_mean(nll, example, b_size)
