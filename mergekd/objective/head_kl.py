"""kl (alias head_kl): D(teachers' mixture ‖ byte head) at every supervised byte (BLD's distillation term)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..losses import LOSSES
from .base import TERMS, ObjectiveTerm, TermOptions
from .context import StepContext, per_example_mean, with_teacher


class DivergenceOptions(TermOptions):
    divergence: str = Field("forward-kl", description="forward-kl, reverse-kl, jsd or a plugin loss")
    temperature: float = Field(1.0, gt=0, description="softens both distributions before the divergence")

    @field_validator("divergence")
    @classmethod
    def _known(cls, v: str) -> str:
        LOSSES.get(v)  # unknown → close matches
        return v


@TERMS.register("kl", aliases=("head_kl",))
class HeadKL(ObjectiveTerm):
    """The byte head's K offsets against the mixture's rows at the same text bytes."""

    name = "kl"
    Options = DivergenceOptions
    needs_teacher_rows = True
    needs_byte_head = True

    def per_example(self, ctx: StepContext):
        if not ctx.has_teacher_rows() or not ctx.batch.head_example.numel():
            return None
        rows = ctx.batch.head_text_row
        has = with_teacher(ctx.batch.head_valid, rows, ctx.teacher_mask)
        div = LOSSES.get(self.options.divergence)(ctx.head_logits()[has], ctx.teacher_logprobs[rows[has]],
                                                  temperature=self.options.temperature)
        return per_example_mean(div, ctx.head_slot_examples()[has], ctx.num_examples)
