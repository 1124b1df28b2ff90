"""Student specs, byte heads, losses and exact byte-row alignment of student batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergekd.bytes import byte_vocab_for
from mergekd.distill.batch import build_student_batch
from mergekd.errors import ConfigError, UnknownNameError
from mergekd.losses import LOSSES
from mergekd.student import build_byte_head, load_student, parse_student_spec
from mergekd.student.spec import StudentSpec


def test_student_spec_parsing_and_errors():
    s = parse_student_spec("new:llama?tokenizer=gpt2&layers=3&hidden=96&heads=3")
    assert (s.kind, s.target, s.options["layers"], s.options["hidden"], s.options["ctx"]) == ("new", "llama", 3, 96, 1024)
    assert parse_student_spec("hf:some/model").kind == "hf"
    with pytest.raises(ConfigError, match="tokenizer=NAME"):
        parse_student_spec("new:llama?layers=2")
    with pytest.raises(ConfigError, match="unknown option"):
        parse_student_spec("new:llama?tokenizer=gpt2&layres=2")
    with pytest.raises(ConfigError, match="must be an integer"):
        parse_student_spec("new:llama?tokenizer=gpt2&layers=two")
    with pytest.raises(ConfigError, match="unknown family"):
        parse_student_spec("new:bert?tokenizer=gpt2")
    with pytest.raises(ConfigError, match="cannot read spec"):
        parse_student_spec("/no/such/folder")
    assert parse_student_spec("teacher:smollm2-135m") == StudentSpec("teacher", "smollm2-135m")
    with pytest.raises(ConfigError, match="teacher: needs a registered teacher name"):
        parse_student_spec("teacher: ")


@pytest.mark.slow
def test_teacher_spec_student_is_the_pretrained_teacher_trainable():
    """``teacher:NAME`` trains a registered teacher's pretrained weights (float32, every parameter trainable) with
    the teacher's own tokenizer: the same logits as the teacher before any step."""
    import torch

    from mergekd.student import load_student
    from mergekd.teachers import load_teacher

    model, tok = load_student("teacher:smollm2-135m")
    teacher = load_teacher("smollm2-135m", overrides={"device": "cpu"})
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    ids = tok("Call me Ishmael.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, teacher.model.float()(ids).logits)


def test_new_student_is_seeded_and_sized():
    a, tok = load_student("new:qwen2?tokenizer=mistral-v1&layers=1&hidden=32&heads=2&seed=3")
    b, _ = load_student("new:qwen2?tokenizer=mistral-v1&layers=1&hidden=32&heads=2&seed=3")
    assert a.config.vocab_size == len(tok) == 32000
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("kind", ["parallel", "recurrent"])
def test_byte_head_shapes_and_conditioning(kind):
    torch.manual_seed(0)
    head = build_byte_head(kind, hidden_size=16, num_offsets=5)
    h = torch.randn(3, 16)
    bytes_a = torch.randint(0, 256, (3, 5))
    bytes_b = bytes_a.clone()
    bytes_b[:, 2] = (bytes_b[:, 2] + 1) % 256
    out_a, out_b = head(h, bytes_a), head(h, bytes_b)
    assert out_a.shape == (3, 5, 257)
    # offsets ≤ 2 never see byte 2; the recurrent head's offsets > 2 do, the parallel head's never
    torch.testing.assert_close(out_a[:, :3], out_b[:, :3])
    assert torch.allclose(out_a[:, 3:], out_b[:, 3:]) == (kind == "parallel")
    with pytest.raises(UnknownNameError, match="parallel"):
        build_byte_head("paralel", 16)


def _reference_divergences(q_logits, p_log, temperature, epsilon=1e-6, beta=0.5):
    """float64 loops: forward KL, reverse KL against ε-smoothed teacher, generalised JSD."""
    out = {"forward-kl": [], "reverse-kl": [], "jsd": []}
    for z, lp in zip(q_logits.double().numpy(), p_log.double().numpy()):
        q = np.exp(z / temperature - np.logaddexp.reduce(z / temperature))
        p = np.exp(lp / temperature)
        p = p / p.sum()
        fkl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)
        ps = (1 - epsilon) * p + epsilon / len(p)
        rkl = sum(qi * (math.log(qi) - math.log(si)) for qi, si in zip(q, ps) if qi > 0)
        m = beta * p + (1 - beta) * q
        js = beta * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m) if pi > 0) + (1 - beta) * sum(
            qi * math.log(qi / mi) for qi, mi in zip(q, m) if qi > 0)
        for k, v in (("forward-kl", fkl), ("reverse-kl", rkl), ("jsd", js)):
            out[k].append(v * temperature ** 2)
    return out


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_losses_match_float64_reference_with_impossible_bytes(temperature):
    torch.manual_seed(1)
    q_logits = torch.randn(4, 257) * 2
    p_log = torch.log_softmax(torch.randn(4, 257) * 2, -1)
    p_log[:, 256] = float("-inf")  # end of text inside a text
    p_log[0, :100] = float("-inf")
    p_log = p_log - p_log.logsumexp(-1, keepdim=True)
    ref = _reference_divergences(q_logits, p_log, temperature)
    for name, values in ref.items():
        got = LOSSES.get(name)(q_logits, p_log, temperature=temperature)
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.double().numpy(), values, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "mistral-v1"])
def test_batch_byte_rows_are_exact(name, tokenizers):
    """Each head row's bytes are its token's bytes; each teacher row index points at that byte of the text."""
    tok = tokenizers(name)
    vocab = byte_vocab_for(tok, name)
    texts = ["Hello  world, 日本語!", "a"]
    batch, offsets = build_student_batch(vocab, texts, num_offsets=4, max_tokens=64)
    data = b"".join(t.encode() for t in texts)
    for m in range(batch.head_example.numel()):
        e, pos = int(batch.head_example[m]), int(batch.head_position[m])
        token = vocab.token_bytes[int(batch.input_ids[e, pos + 1])]
        assert int(batch.target_ids[e, pos]) == int(batch.input_ids[e, pos + 1])
        for k in range(4):
            assert bool(batch.head_valid[m, k]) == (k < len(token))
            if k < len(token):
                assert int(batch.head_bytes[m, k]) == token[k]
                row = int(batch.head_text_row[m, k])
                if row >= 0:
                    assert offsets[e] <= row < offsets[e + 1] and data[row] == token[k]
    # every text byte covered by a predicted token's first K bytes appears exactly once
    rows = batch.head_text_row[batch.head_text_row >= 0]
    assert rows.unique().numel() == rows.numel()
