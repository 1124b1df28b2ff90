"""StudentWithHead: the student LM, its optional byte head and the objective's terms in one module.

The loss is the weighted sum of the terms of :mod:`mergekd.objective` (token CE, byte-head CE, head KL,
token-trie KL, plugins). Each term returns a value per example, averaged over the example's own tokens or byte
rows; examples are then averaged. Data-parallel workers that each hold an equal share of a global batch then
average to exactly the 1-process gradient (DDP averages gradients), which is what makes a 2-process run reproduce
a 1-process run.

``LossWeights`` is the flag-style description (one weight per built-in term) that :func:`terms_from_weights`
expands into the term list; the config's ``objective:`` list is the general form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..objective import ObjectiveTerm, StepContext, build_terms
from ..student.byte_rows import StudentByteRows
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
    with_head: bool | None = None  # byte CE computed (and logged) when the head exists; None: byte_ce or kl > 0


def terms_from_weights(w: LossWeights) -> list[ObjectiveTerm]:
    """The flags' objective, in the order the loss adds them: token CE, byte CE (whenever the byte head is
    built, so it is logged even at weight 0), head KL and token-trie KL when their weights are > 0."""
    with_head = w.with_head if w.with_head is not None else (w.byte_ce > 0 or w.kl > 0)
    specs: list[dict] = [{"term": "token_ce", "weight": w.token_ce}]
    if with_head:
        specs.append({"term": "byte_ce", "weight": w.byte_ce})
    div = {"divergence": w.kl_loss, "temperature": w.temperature}
    if w.kl > 0:
        specs.append({"term": "kl", "weight": w.kl, **div})
    if w.trie_kl > 0:
        specs.append({"term": "trie_kl", "weight": w.trie_kl, "depth": w.trie_kl_depth, **div})
    return build_terms(specs)


class StudentWithHead(nn.Module):
    """The student LM and (optionally) its byte head in one module, so optimisers and DDP see both."""

    def __init__(self, student: nn.Module, head: nn.Module | None, byte_rows: StudentByteRows | None = None):
        super().__init__()
        self.student = student
        self.head = head
        # the student vocabulary's trie tables, only needed by the trie term; not parameters and not saved with
        # checkpoints (a function of the tokenizer), moved to the logits' device on first use
        self.byte_rows = byte_rows

    # Pass-throughs that accelerate/FSDP look for on the root module: without them the whole model is one FSDP
    # unit (no per-layer sharding) and tied embeddings are not re-tied after sharded loading.
    @property
    def _no_split_modules(self):
        return getattr(self.student, "_no_split_modules", None)

    def tie_weights(self, *args, **kwargs):
        return self.student.tie_weights(*args, **kwargs)

    def get_input_embeddings(self):
        return self.student.get_input_embeddings()

    def get_output_embeddings(self):
        return self.student.get_output_embeddings()

    def forward(self, batch: StudentBatch, teacher_logprobs: torch.Tensor | None, teacher_mask: torch.Tensor | None,
                terms: list[ObjectiveTerm] | LossWeights, on_policy: bool = False) -> dict[str, torch.Tensor]:
        """Loss parts ``{term name: mean value, "loss": weighted sum, "tokens": count}``.

        ``on_policy``: the batch's text was written by the student, so terms that score the reference text get
        weight 0 (they are still computed and logged)."""
        if isinstance(terms, LossWeights):
            terms = terms_from_weights(terms)
        out = self.student(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=self.head is not None)
        logits = out.logits.float()
        if self.byte_rows is not None:
            self.byte_rows = self.byte_rows.to(logits.device)
        ctx = StepContext(batch=batch, logits=logits, hidden=out.hidden_states[-1] if self.head is not None else None,
                          head=self.head, byte_rows=self.byte_rows, teacher_logprobs=teacher_logprobs,
                          teacher_mask=teacher_mask)
        parts: dict[str, torch.Tensor] = {}
        total = None
        for term in terms:
            value = term.per_example(ctx)
            if value is None:
                continue
            weight = 0.0 if (on_policy and term.uses_reference_text) else term.weight
            parts[term.name] = value
            total = weight * value if total is None else total + weight * value
        if total is None:
            total = torch.zeros(ctx.num_examples, device=logits.device)
        if self.head is not None and not batch.head_example.numel():
            # no supervised byte row in this batch (e.g. every on-policy sample came back empty): keep the head
            # in the graph with a zero gradient, so data-parallel workers still agree on which parameters reduce
            total = total + 0.0 * sum(p.sum() for p in self.head.parameters())
        parts = {k: v.mean() for k, v in parts.items()}
        parts["loss"] = total.mean()
        parts["tokens"] = (batch.target_ids != -100).sum()
        return parts
