"""StepContext: what one training step offers the objective terms, with the shared pieces computed once.

Why one object: the token CE and the trie term share the log-softmax over the vocabulary, the byte-CE and the
head KL share the byte head's logits. The context computes each on first use and caches it, so a term list
never pays twice and a term that is absent costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def per_example_mean(values: torch.Tensor, example: torch.Tensor, num_examples: int) -> torch.Tensor:
    """[B]: the mean of ``values`` over each example's own entries (0 where an example has none)."""
    sums = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(0, example, values)
    counts = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(
        0, example, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def with_teacher(valid: torch.Tensor, rows: torch.Tensor, teacher_mask: torch.Tensor) -> torch.Tensor:
    """Supervised byte slots that have a text row (≥ 0) where the mixture is defined."""
    has = valid & (rows >= 0)
    has[has.clone()] = teacher_mask[rows[has]]
    return has


@dataclass
class StepContext:
    """The batch, the student's outputs and (when some term reads them) the teachers' mixed rows."""

    batch: object  # mergekd.distill.batch.StudentBatch
    logits: torch.Tensor  # [B, L, V] float32
    hidden: torch.Tensor | None  # last hidden states [B, L, H] when the byte head is in use
    head: nn.Module | None
    byte_rows: object | None  # mergekd.student.byte_rows.StudentByteRows when a term needs the student's trie
    teacher_logprobs: torch.Tensor | None  # [ΣN, 257] mixture rows of the batch's texts
    teacher_mask: torch.Tensor | None  # [ΣN]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_examples(self) -> int:
        return self.logits.shape[0]

    def token_logprobs(self) -> torch.Tensor:
        """[B·L, V] log-softmax at every flat position, shared by the token CE and the trie term (computed once:
        selecting the kept rows first would copy [N, V] and scatter it back in the backward pass)."""
        if "token_logprobs" not in self._cache:
            self._cache["token_logprobs"] = torch.log_softmax(self.logits.reshape(-1, self.logits.shape[-1]), -1)
        return self._cache["token_logprobs"]

    def head_logits(self) -> torch.Tensor:
        """[M, K, 257] byte-head logits at each supervised token (shared by the byte CE and the head KL)."""
        if "head_logits" not in self._cache:
            if self.head is None or self.hidden is None:
                raise ValueError("a byte-head term needs the byte head: build StudentWithHead with a head")
            b = self.batch
            hidden = self.hidden[b.head_example, b.head_position]
            self._cache["head_logits"] = self.head(hidden, b.head_bytes).float()
        return self._cache["head_logits"]

    def head_slot_examples(self) -> torch.Tensor:
        """[M, K]: the example of every byte-head slot."""
        return self.batch.head_example.unsqueeze(1).expand_as(self.batch.head_valid)

    def has_teacher_rows(self) -> bool:
        return self.teacher_logprobs is not None and self.teacher_mask is not None
