"""The boundary term: D(mixture row at a student token boundary ‖ the student's own first-byte distribution).

The fast path groups the student's token softmax into 256 first-byte bins with one ``index_add``; the reference
here walks the vocabulary in Python in float64, token by token, using the tokenizer's own byte spelling.
"""

from __future__ import annotations

import math

import pytest
import torch

from mergekd.bytes import byte_vocab_for
from mergekd.distill.batch import build_student_batch
from mergekd.distill.loop import first_byte_map
from mergekd.distill.objective import LossWeights, StudentWithHead

STUDENT = "new:llama?tokenizer={tok}&layers=1&hidden=32&heads=2&ctx=256"
TEXTS = ["Hello  world, naïve café — 日本語 😀!", "The quick brown fox jumps over the lazy dog.\n"]


def reference_first_byte(logits: torch.Tensor, token_bytes) -> torch.Tensor:
    """float64, one token at a time: P(first byte = c) ∝ Σ_{v spells c…} softmax(logits)_v, specials excluded."""
    probs = torch.softmax(logits.double(), -1)
    out = torch.zeros(logits.shape[0], 256, dtype=torch.float64)
    for v, spelled in enumerate(token_bytes):
        if spelled:
            out[:, spelled[0]] += probs[:, v]
    return torch.log(out / out.sum(1, keepdim=True))


@pytest.mark.parametrize("tok", ["mistral-v3", "gpt2"])
def test_first_byte_distribution_matches_float64_reference(tokenizers, tok):
    from mergekd.student import load_student

    student, tokenizer = load_student(STUDENT.format(tok=tok))
    vocab = byte_vocab_for(tokenizer)
    model = StudentWithHead(student, None, first_byte_map(vocab, student))
    torch.manual_seed(1)
    width = model.first_byte.numel()
    logits = torch.randn(3, width) * 4
    got = model.student_first_byte_logprobs(logits)
    want = reference_first_byte(logits, list(vocab.token_bytes) + [None] * (width - len(vocab)))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[:, :256][finite].double(), want[finite], atol=1e-4, rtol=0)  # float32 sums
    assert bool((got[:, :256][~finite] < -60).all())  # bytes no token starts with: probability ~0
    assert float(got[:, 256].exp().max()) == 0.0  # end of text is never a token's first byte


def test_boundary_term_is_the_mean_divergence_at_token_starts(tokenizers):
    """The loss part equals a hand-computed per-example mean of KL(teacher row at each token's first byte ‖
    reference first-byte distribution of the logits predicting that token), and its gradient reaches the
    student's output layer (the byte head does not exist in this run)."""
    from mergekd.student import load_student

    student, tokenizer = load_student(STUDENT.format(tok="mistral-v3"))
    vocab = byte_vocab_for(tokenizer)
    model = StudentWithHead(student, None, first_byte_map(vocab, student))
    batch, offsets = build_student_batch(vocab, TEXTS, 4, 256, 0)
    n = int(offsets[-1])
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(n, 257) * 2, -1)
    teacher[:, 256] = -math.inf
    teacher = torch.log_softmax(teacher, -1)
    mask = torch.ones(n, dtype=torch.bool)
    mask[3] = False  # an undefined teacher row drops out
    weights = LossWeights(1.0, 0.0, 0.0, "forward-kl", 1.0, boundary_kl=1.0)
    parts = model(batch, teacher, mask, weights)

    with torch.no_grad():
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    per_example: dict[int, list[float]] = {}
    tb = list(vocab.token_bytes) + [None] * (model.first_byte.numel() - len(vocab))
    for m in range(batch.head_example.numel()):
        row = int(batch.head_text_row[m, 0])
        if not bool(batch.head_valid[m, 0]) or row < 0 or not bool(mask[row]):
            continue
        e, pos = int(batch.head_example[m]), int(batch.head_position[m])
        log_q = reference_first_byte(logits[e, pos][None], tb)[0]
        p = teacher[row, :256].double().exp()
        kl = float(sum(p[c] * (math.log(p[c]) - log_q[c]) for c in range(256) if p[c] > 0))
        per_example.setdefault(e, []).append(kl)
    want = sum(sum(v) / len(v) for v in per_example.values()) / len(TEXTS)
    assert float(parts["boundary_kl"].detach()) == pytest.approx(want, rel=1e-4)
    model.zero_grad()
    parts["loss"].backward()
    head_grad = student.get_output_embeddings().weight.grad
    assert head_grad is not None and float(head_grad.abs().sum()) > 0


def test_config_accepts_boundary_only_and_ce_only_drops_it(tmp_path):
    from mergekd.distill.config import DistillConfig

    base = dict(student="new:llama", data=tmp_path / "d.txt", out=tmp_path / "o")
    only = DistillConfig(**base, teachers=["smollm2-135m"], byte_ce_weight=0, kl_weight=0, boundary_kl_weight=1)
    assert only.boundary_kl_weight == 1
    assert DistillConfig(**base, boundary_kl_weight=1).boundary_kl_weight == 0  # CE-only: nothing to match
    with pytest.raises(Exception, match="boundary_kl_weight"):
        DistillConfig(**base, teachers=["smollm2-135m"], byte_ce_weight=0, kl_weight=0)
    # runs from before the term existed keep their fingerprint
    assert "boundary_kl_weight" not in DistillConfig(**base).model_dump_json() or \
        DistillConfig(**base).fingerprint() == DistillConfig(**base, boundary_kl_weight=0).fingerprint()
