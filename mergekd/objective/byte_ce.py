"""byte_ce: the byte head's cross-entropy on the text's next bytes (BLD's byte head; no teacher needed)."""

from __future__ import annotations

from torch import nn

from .base import TERMS, ObjectiveTerm
from .context import StepContext, per_example_mean


@TERMS.register("byte_ce")
class ByteCE(ObjectiveTerm):
    """CE of the byte head's K offsets against the actual bytes of each student token."""

    name = "byte_ce"
    needs_byte_head = True
    uses_reference_text = True

    def per_example(self, ctx: StepContext):
        if not ctx.batch.head_example.numel():
            return None
        valid = ctx.batch.head_valid
        nll = nn.functional.cross_entropy(ctx.head_logits()[valid], ctx.batch.head_bytes[valid], reduction="none")
        return per_example_mean(nll, ctx.head_slot_examples()[valid], ctx.num_examples)
