"""The training objective: token CE + λ_b·byte CE + λ_kl·D(mixture ‖ byte head) + λ_bd·D(mixture ‖ student
first byte), normalised per example.

The last term (``boundary_kl``) reaches the student's *token* distribution directly. At a student token boundary
the student's next token fixes the next byte's distribution exactly: P_s(byte = c) = Σ over tokens v whose
bytes start with c of P_s(v) (specials and empty tokens excluded, renormalised over the 256 bytes — the same
convention as the teachers' canonical-path rows). The teachers' mixture row at that byte is a distribution over
the same 256 bytes, so the two compare exactly, whatever the tokenizers. The byte head only shapes the hidden
state; this term gives the token softmax itself the teachers' soft targets where they carry the most
information (inside a token a row is nearly deterministic, at a boundary it spreads over many bytes).

Why per example: each example's terms are averaged over its own tokens / byte rows, then examples are averaged.
Data-parallel workers that each hold an equal share of a global batch then average to exactly the 1-process
gradient (DDP averages gradients), which is what makes a 2-process run reproduce a 1-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses import LOSSES
from .batch import StudentBatch


@dataclass(frozen=True)
class LossWeights:
    token_ce: float = 1.0
    byte_ce: float = 1.0
    kl: float = 0.1
    kl_loss: str = "forward-kl"
    temperature: float = 1.0
    boundary_kl: float = 0.0


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

    def __init__(self, student: nn.Module, head: nn.Module | None, first_byte: torch.Tensor | None = None):
        super().__init__()
        self.student = student
        self.head = head
        # student token id → its first byte (0..255), or 256 for specials / tokens without bytes; only needed by
        # the boundary term, not saved with checkpoints (it is a function of the tokenizer)
        self.register_buffer("first_byte", first_byte, persistent=False)

    def student_first_byte_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """[M, V] token logits → [M, 257] log P(first byte of the next token), column 256 at ~−inf.

        A grouped log-sum-exp: exp(logits − row max) summed into 257 bins with one ``index_add`` (vectorised over
        the vocabulary), then renormalised over the 256 byte bins.
        """
        if self.first_byte is None:
            raise ValueError("boundary_kl needs the student's first-byte map: StudentWithHead(..., first_byte=...)")
        peak = logits.max(-1, keepdim=True).values.detach()
        bins = torch.zeros(logits.shape[0], 257, dtype=logits.dtype, device=logits.device)
        bins = bins.index_add(1, self.first_byte, (logits - peak).exp())
        log_bins = torch.log(bins[:, :256].clamp_min(torch.finfo(logits.dtype).tiny))
        log_q = log_bins - torch.logsumexp(log_bins, -1, keepdim=True)
        return torch.cat([log_q, torch.full_like(log_q[:, :1], -1e4)], 1)  # finite: never 0·(−inf) in a loss

    def forward(self, batch: StudentBatch, teacher_logprobs: torch.Tensor | None, teacher_mask: torch.Tensor | None,
                weights: LossWeights) -> dict[str, torch.Tensor]:
        out = self.student(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=self.head is not None)
        logits = out.logits.float()
        b, length, vocab = logits.shape
        flat_targets = batch.target_ids.reshape(-1)
        keep = flat_targets != -100
        token_nll = nn.functional.cross_entropy(logits.reshape(-1, vocab)[keep], flat_targets[keep], reduction="none")
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
        if teacher_logprobs is not None and weights.boundary_kl > 0 and batch.head_example.numel():
            rows = batch.head_text_row[:, 0]
            has = _with_teacher(batch.head_valid[:, 0], rows, teacher_mask)
            token_logits = logits[batch.head_example[has], batch.head_position[has]]  # [M', V]
            div = LOSSES.get(weights.kl_loss)(self.student_first_byte_logprobs(token_logits),
                                              teacher_logprobs[rows[has]], temperature=weights.temperature)
            boundary = _per_example_mean(div, batch.head_example[has], b)
            parts["boundary_kl"] = boundary
            total = total + weights.boundary_kl * boundary
        if self.head is not None and not batch.head_example.numel():
            # no supervised byte row in this batch (e.g. every on-policy sample came back empty): keep the head
            # in the graph with a zero gradient, so data-parallel workers still agree on which parameters reduce
            total = total + 0.0 * sum(p.sum() for p in self.head.parameters())
        parts = {k: v.mean() for k, v in parts.items()}
        parts["loss"] = total.mean()
        parts["tokens"] = keep.sum()
        return parts
