"""The token-trie term: D(mixture row ‖ the next-byte distribution the student's token softmax implies).

The fast path reads child masses from the block segment tree with autograd; the reference here walks the
vocabulary in Python in float64, token by token, using the tokenizer's own byte spelling (``startswith``), and
its gradient comes from autograd through that float64 loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from mergekd.bytes import byte_vocab_for
from mergekd.bytes.targets import model_vocab_width
from mergekd.distill.batch import build_student_batch
from mergekd.distill.objective import LossWeights, StudentWithHead
from mergekd.student.byte_rows import StudentByteRows, teacher_rows_on_support

STUDENT = "new:llama?tokenizer={tok}&layers=1&hidden=32&heads=2&ctx=256"
TEXTS = ["Hello  world, naïve café — 日本語 😀!", "The quick brown fox jumps over the lazy dog.\n"]


def reference_rows(logits: torch.Tensor, token_bytes, prefixes: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64, one token at a time: (log Q [R, 257], support [R, 257]) for row r = (logits[r], prefix r)."""
    probs = torch.softmax(logits.double(), -1)
    rows, support = [], torch.zeros(len(prefixes), 257, dtype=torch.bool)
    for r, prefix in enumerate(prefixes):
        masses = [probs.new_zeros(()) for _ in range(257)]
        for v, spelled in enumerate(token_bytes):
            if not spelled or not spelled.startswith(prefix):
                continue
            outcome = spelled[len(prefix)] if len(spelled) > len(prefix) else 256
            masses[outcome] = masses[outcome] + probs[r, v]
            support[r, outcome] = True
        m = torch.stack(masses)
        rows.append(torch.log(m) - torch.log(m.sum()))
    return torch.stack(rows), support


def _tokens_and_offsets(vocab, count: int, seed: int):
    """Random (token id, offset < its length) pairs, biased to long tokens so inner offsets are exercised."""
    g = torch.Generator().manual_seed(seed)
    spelled = [i for i, b in enumerate(vocab.token_bytes) if b and len(b) >= 3]
    ids = [spelled[int(j)] for j in torch.randint(len(spelled), (count,), generator=g)]
    offsets = [int(torch.randint(len(vocab.token_bytes[i]), (1,), generator=g)) for i in ids]
    return ids, offsets


@pytest.mark.parametrize("tok", ["mistral-v3", "gpt2"])
def test_trie_rows_and_gradients_match_float64_reference(tokenizers, tok):
    vocab = byte_vocab_for(tokenizers(tok))
    width = len(vocab) + 3  # a padded output layer: the extra ids spell nothing
    rows = StudentByteRows.for_vocab(vocab, width)
    ids, offsets = _tokens_and_offsets(vocab, 6, seed=3)
    ids[0], offsets[0] = ids[0], 0  # the root: the next token's first byte
    torch.manual_seed(1)
    logits = (torch.randn(4, width) * 4).requires_grad_(True)
    row_pos = torch.tensor([0, 1, 1, 2, 3, 3])
    got, support = rows.logprobs(torch.log_softmax(logits, -1), row_pos, torch.tensor(ids), torch.tensor(offsets))
    ref_logits = logits.detach().double().requires_grad_(True)
    token_bytes = list(vocab.token_bytes) + [None] * 3
    want, want_support = reference_rows(ref_logits[row_pos], token_bytes,
                                        [token_bytes[i][:k] for i, k in zip(ids, offsets)])
    assert torch.equal(support, want_support)
    assert bool(support[0, 256]) is False  # no token is empty
    assert bool(support[torch.arange(6), torch.tensor([token_bytes[i][k] for i, k in zip(ids, offsets)])].all())
    torch.testing.assert_close(got[support].double(), want[support].detach(), atol=2e-5, rtol=0)
    # gradients of a weighted sum over supported outcomes, fast vs the float64 loop
    weight = torch.rand(got.shape, generator=torch.Generator().manual_seed(0)) * support
    (got * weight).sum().backward()
    (torch.where(want_support, want, torch.zeros_like(want)) * weight.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, atol=1e-5, rtol=1e-4)


def test_tiny_child_keeps_its_mass_next_to_a_heavy_prefix(tokenizers):
    """A child of mass ~e^-60 beside a prefix of mass ~1 is a sum of positive terms, not a difference."""
    vocab = byte_vocab_for(tokenizers("gpt2"))
    rows = StudentByteRows.for_vocab(vocab, len(vocab))
    the = vocab.tokenizer.convert_tokens_to_ids("Ġthe")
    logits = torch.full((1, len(vocab)), -60.0)
    logits[0, the] = 0.0  # " the" has ~all the mass; every other " t…" token is e^-60
    got, support = rows.logprobs(torch.log_softmax(logits, -1), torch.zeros(1, dtype=torch.long), torch.tensor([the]), torch.tensor([2]))
    want, _ = reference_rows(logits, list(vocab.token_bytes), [b" t"])
    assert got[0, ord("h")] > -1e-6
    other = support[0].clone()
    other[ord("h")] = False
    torch.testing.assert_close(got[0][other].double(), want[0][other], atol=1e-3, rtol=0)
    assert float(got[0][other].max()) < -50


def test_teacher_rows_move_unsupported_mass_to_end():
    support = torch.zeros(2, 257, dtype=torch.bool)
    support[0, [ord("a"), ord("b"), 256]] = True  # END supported: a token equals the prefix
    support[1, [ord("a"), ord("b")]] = True  # no token equals the prefix: unsupported mass is dropped
    p = torch.zeros(2, 257, dtype=torch.float64)
    p[:, ord("a")], p[:, ord("b")], p[:, ord(" ")], p[:, 256] = 0.4, 0.2, 0.3, 0.1
    got, usable = teacher_rows_on_support(p.log(), support)
    assert usable.all()
    torch.testing.assert_close(got[0].exp()[[ord("a"), ord("b"), 256]].double(),
                               torch.tensor([0.4, 0.2, 0.4], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1].exp()[[ord("a"), ord("b")]].double(),
                               torch.tensor([0.4 / 0.6, 0.2 / 0.6], dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(got[1].exp().sum()) == pytest.approx(1.0, abs=1e-6)
    nothing = torch.zeros(1, 257, dtype=torch.bool)
    nothing[0, 7] = True
    assert not bool(teacher_rows_on_support(p[:1].log(), nothing)[1][0])


@pytest.mark.parametrize("depth", [1, 0])
def test_trie_term_is_the_mean_divergence_over_token_bytes(tokenizers, depth):
    """The loss part equals a hand-computed per-example mean of KL(teacher row mapped onto the student's
    outcomes ‖ reference trie row) over (token, offset < depth) with a defined teacher row, and its gradient
    reaches the student's output layer (no byte head in this run)."""
    from mergekd.student import load_student

    student, tokenizer = load_student(STUDENT.format(tok="mistral-v3"))
    vocab = byte_vocab_for(tokenizer)
    width = model_vocab_width(student)
    model = StudentWithHead(student, None, StudentByteRows.for_vocab(vocab, width))
    batch, offsets = build_student_batch(vocab, TEXTS, 4, 256, 0)
    n = int(offsets[-1])
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(n, 257) * 2, -1)
    mask = torch.ones(n, dtype=torch.bool)
    mask[3] = False  # an undefined teacher row drops out
    parts = model(batch, teacher, mask, LossWeights(1.0, 0.0, 0.0, "forward-kl", 1.0, trie_kl=1.0,
                                                    trie_kl_depth=depth))

    with torch.no_grad():
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    token_bytes = list(vocab.token_bytes) + [None] * (width - len(vocab))
    per_example: dict[int, list[float]] = {}
    for m in range(batch.head_example.numel()):
        e, pos = int(batch.head_example[m]), int(batch.head_position[m])
        token = int(batch.target_ids[e, pos])
        for k in range(depth or batch.head_valid.shape[1]):
            row = int(batch.head_text_row[m, k])
            if not bool(batch.head_valid[m, k]) or row < 0 or not bool(mask[row]):
                continue
            log_q, support = reference_rows(logits[e, pos][None], token_bytes, [token_bytes[token][:k]])
            p = teacher[row].double().exp()
            target = torch.where(support[0], p, torch.zeros_like(p))
            spill = p[:256][~support[0, :256]].sum() + p[256]  # bytes no token continues, and end of text
            target[256] = spill if support[0, 256] else 0.0
            target = target / target.sum()
            kl = float(sum(target[c] * (math.log(target[c]) - log_q[0, c]) for c in range(257) if target[c] > 0))
            per_example.setdefault(e, []).append(kl)
    want = sum(sum(v) / len(v) for v in per_example.values()) / len(TEXTS)
    assert float(parts["trie_kl"].detach()) == pytest.approx(want, rel=1e-4)
    model.zero_grad()
    parts["loss"].backward()
    grad = student.get_output_embeddings().weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_config_accepts_trie_only_and_refuses_it_without_teachers(tmp_path):
    from mergekd.distill.config import DistillConfig

    base = dict(student="new:llama?tokenizer=gpt2", data=tmp_path / "d.txt", out=tmp_path / "o")
    only = DistillConfig(**base, teachers=["smollm2-135m"], byte_ce_weight=0, kl_weight=0, trie_kl_weight=1)
    assert only.trie_kl_weight == 1
    assert DistillConfig(**base).trie_kl_weight == 0  # no teachers: the teacher terms' defaults do not apply
    with pytest.raises(Exception, match="trie_kl_weight=1 needs teacher rows.*--teachers"):
        DistillConfig(**base, trie_kl_weight=1)  # set without teachers: refused, never silently dropped
    with pytest.raises(Exception, match="trie_kl_weight"):
        DistillConfig(**base, teachers=["smollm2-135m"], trie_kl_weight=0)  # no term reads the teachers
    # the defaults follow the measurements: the trie term alone; --recipe bld gives BLD's byte head
    default = DistillConfig(**base, teachers=["smollm2-135m"])
    assert (default.trie_kl_weight, default.byte_ce_weight, default.kl_weight) == (3.0, 0.0, 0.0)
    bld = DistillConfig(**base, teachers=["smollm2-135m"], recipe="bld")
    assert (bld.trie_kl_weight, bld.byte_ce_weight, bld.kl_weight) == (0.0, 1.0, 0.1)
    assert DistillConfig(**base, teachers=["smollm2-135m"], recipe="bld", kl_weight=1).kl_weight == 1  # yours
    with pytest.raises(Exception, match="trie_kl_depth.*byte-offsets"):
        DistillConfig(**base, teachers=["smollm2-135m"], trie_kl_weight=1, trie_kl_depth=12, byte_offsets=10)
    # runs without the term keep their fingerprint whatever the (unused) depth says
    assert DistillConfig(**base).fingerprint() == DistillConfig(**base, trie_kl_depth=3).fingerprint()
    assert only.fingerprint() != DistillConfig(**base, teachers=["smollm2-135m"], byte_ce_weight=0, kl_weight=0,
                                               trie_kl_weight=1, trie_kl_depth=1).fingerprint()
