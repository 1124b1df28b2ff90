"""The training objective: token CE + λ_b·byte CE + λ_kl·D(mixture ‖ byte head) + λ_t·D(mixture ‖ student
token trie), normalised per example.

The last term (``trie_kl``) reaches the student's *token* distribution directly. At byte offset k of each student
token, the student's next-token distribution implies a next-byte distribution through its own byte trie
(:mod:`mergekd.student.byte_rows`: the canonical-path rule the teachers' rows use, plus an END outcome for "the
token stops here"). The teachers' mixture row at that text byte is mapped onto the same outcomes and compared
with the configured divergence. The byte head only shapes the hidden state; this term gives the token softmax
itself a soft target at every byte: at offset 0 (a token boundary) it spreads over many bytes, inside a token it
ranks the subtrees of the vocabulary that share the token's prefix. ``trie_kl_depth`` = 1 keeps offset 0 only
(the first byte of the next token); 0 uses every supervised offset.

Why per example: each example's terms are averaged over its own tokens / byte rows, then examples are averaged.
Data-parallel workers that each hold an equal share of a global batch then average to exactly the 1-process
gradient (DDP averages gradients), which is what makes a 2-process run reproduce a 1-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses import LOSSES
from ..student.byte_rows import StudentByteRows, teacher_rows_on_support
from .batch import StudentBatch


@dataclass(frozen=True)
class LossWeights:
    token_ce: float = 1.0
    byte_ce: float = 1.0
    kl: float = 0.1
    kl_loss: str = "forward-kl"
    temperature: float = 1.0
    trie_kl: float = 0.0
    trie_kl_depth: int = 0  # byte offsets per token (0: every supervised offset)


def _per_example_mean(values: torch.Tensor, example: torch.Tensor, num_examples: int) -> torch.Tensor:
    sums = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(0, example, values)
    counts = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(
        0, example, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def _with_teacher(valid: torch.Tensor, rows: torch.Tensor, teacher_mask: torch.Tensor) -> torch.Tensor:
    """Supervised byte slots that have a text row (≥ 0) where the mixture is defined."""
    has = valid & (rows >= 0)
    has[has.clone()] = teacher_mask[rows[has]]
    return has


class StudentWithHead(nn.Module):
    """The student LM and (optionally) its byte head in one module, so optimisers and DDP see both."""

    def __init__(self, student: nn.Module, head: nn.Module | None, byte_rows: StudentByteRows | None = None):
        super().__init__()
        self.student = student
        self.head = head
        # the student vocabulary's trie tables, only needed by the trie term; not parameters and not saved with
        # checkpoints (a function of the tokenizer), moved to the logits' device on first use
        self.byte_rows = byte_rows

    def _trie_kl(self, token_logprobs, batch: StudentBatch, teacher_logprobs, teacher_mask, weights: LossWeights):
        """Per-row D(mixture mapped onto the student's outcomes ‖ student trie row) and each row's example.

        ``token_logprobs`` [B·L, V]: the token CE's own log-softmax at every flat position (reused, so the term
        adds no second softmax nor a gather of the logits)."""
        if self.byte_rows is None:
            raise ValueError("trie_kl needs the student's byte trie: StudentWithHead(..., byte_rows=...)")
        depth = weights.trie_kl_depth or batch.head_valid.shape[1]
        rows = batch.head_text_row[:, :depth]
        has = _with_teacher(batch.head_valid[:, :depth], rows, teacher_mask)
        head_row, offset = has.nonzero(as_tuple=True)
        ex, pos = batch.head_example[head_row], batch.head_position[head_row]
        row_pos = ex * batch.target_ids.shape[1] + pos
        self.byte_rows = self.byte_rows.to(token_logprobs.device)
        student_lp, support = self.byte_rows.logprobs(token_logprobs, row_pos, batch.target_ids[ex, pos], offset)
        target, usable = teacher_rows_on_support(teacher_logprobs[rows[has]], support)
        div = LOSSES.get(weights.kl_loss)(student_lp[usable], target[usable], temperature=weights.temperature)
        return div, ex[usable]

    def forward(self, batch: StudentBatch, teacher_logprobs: torch.Tensor | None, teacher_mask: torch.Tensor | None,
                weights: LossWeights) -> dict[str, torch.Tensor]:
        out = self.student(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=self.head is not None)
        logits = out.logits.float()
        b, length, vocab = logits.shape
        flat_targets = batch.target_ids.reshape(-1)
        keep = flat_targets != -100
        # log-softmax at every position (shared with trie_kl): selecting the kept rows first would copy [N, V]
        # and scatter it back in the backward pass, which costs more than the few padded rows it saves
        token_logprobs = torch.log_softmax(logits.reshape(-1, vocab), -1)  # [B·L, V]
        token_nll = -token_logprobs.gather(1, flat_targets.clamp(min=0).unsqueeze(1)).squeeze(1)[keep]
        example_of_pos = torch.arange(b, device=logits.device).repeat_interleave(length)[keep]
        token_ce = _per_example_mean(token_nll, example_of_pos, b)
        parts = {"token_ce": token_ce}
        total = weights.token_ce * token_ce
        if self.head is not None and batch.head_example.numel():
            hidden = out.hidden_states[-1][batch.head_example, batch.head_position]
            head_logits = self.head(hidden, batch.head_bytes).float()  # [M, K, 257]
            valid = batch.head_valid
            ex = batch.head_example.unsqueeze(1).expand_as(valid)
            byte_nll = nn.functional.cross_entropy(head_logits[valid], batch.head_bytes[valid], reduction="none")
            byte_ce = _per_example_mean(byte_nll, ex[valid], b)
            parts["byte_ce"] = byte_ce
            total = total + weights.byte_ce * byte_ce
            if teacher_logprobs is not None and weights.kl > 0:
                rows = batch.head_text_row
                has = _with_teacher(valid, rows, teacher_mask)
                div = LOSSES.get(weights.kl_loss)(head_logits[has], teacher_logprobs[rows[has]],
                                                  temperature=weights.temperature)
                kl = _per_example_mean(div, ex[has], b)
                parts["kl"] = kl
                total = total + weights.kl * kl
        if teacher_logprobs is not None and weights.trie_kl > 0 and batch.head_example.numel():
            div, ex = self._trie_kl(token_logprobs, batch, teacher_logprobs, teacher_mask, weights)
            trie = _per_example_mean(div, ex, b)
            parts["trie_kl"] = trie
            total = total + weights.trie_kl * trie
        if self.head is not None and not batch.head_example.numel():
            # no supervised byte row in this batch (e.g. every on-policy sample came back empty): keep the head
            # in the graph with a zero gradient, so data-parallel workers still agree on which parameters reduce
            total = total + 0.0 * sum(p.sum() for p in self.head.parameters())
        parts = {k: v.mean() for k, v in parts.items()}
        parts["loss"] = total.mean()
        parts["tokens"] = keep.sum()
        return parts
