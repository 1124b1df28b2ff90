"""trie_kl: D(mixture ‖ the next-byte rows the student's own token softmax implies through its byte trie).

At byte offset k of each student token, the student's next-token distribution implies a next-byte distribution
through its byte trie (:mod:`mergekd.student.byte_rows`: the canonical-path rule the teachers' rows use, plus an
END outcome for "the token stops here"). The mixture row at that text byte is mapped onto the same outcomes and
compared with the divergence. It gives the token softmax itself a soft target at every byte: at offset 0 it
spreads over many bytes, inside a token it ranks the subtrees that share the token's prefix.
"""

from __future__ import annotations

from pydantic import Field

from ..losses import LOSSES
from ..student.byte_rows import teacher_rows_on_support
from .base import TERMS, ObjectiveTerm
from .context import StepContext, per_example_mean, with_teacher
from .head_kl import DivergenceOptions


class TrieOptions(DivergenceOptions):
    depth: int = Field(0, ge=0, le=64, description="byte offsets per student token: 1 = the first byte only, "
                                                   "0 = every supervised offset (up to byte_offsets)")


@TERMS.register("trie_kl")
class TrieKL(ObjectiveTerm):
    name = "trie_kl"
    Options = TrieOptions
    needs_teacher_rows = True
    needs_student_byte_rows = True

    def per_example(self, ctx: StepContext):
        batch = ctx.batch
        if not ctx.has_teacher_rows() or not batch.head_example.numel():
            return None
        if ctx.byte_rows is None:
            raise ValueError("trie_kl needs the student's byte trie: StudentWithHead(..., byte_rows=...)")
        token_logprobs = ctx.token_logprobs()
        depth = self.options.depth or batch.head_valid.shape[1]
        rows = batch.head_text_row[:, :depth]
        has = with_teacher(batch.head_valid[:, :depth], rows, ctx.teacher_mask)
        head_row, offset = has.nonzero(as_tuple=True)
        ex, pos = batch.head_example[head_row], batch.head_position[head_row]
        row_pos = ex * batch.target_ids.shape[1] + pos
        # StudentWithHead moved the trie tables to the logits' device before building the context
        student_lp, support = ctx.byte_rows.logprobs(token_logprobs, row_pos, batch.target_ids[ex, pos], offset)
        target, usable = teacher_rows_on_support(ctx.teacher_logprobs[rows[has]], support)
        div = LOSSES.get(self.options.divergence)(student_lp[usable], target[usable],
                                                  temperature=self.options.temperature)
        return per_example_mean(div, ex[usable], ctx.num_examples)
