"""The conversion against the float64 brute force, on every real tokenizer family, with tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ADVERSARIAL, REAL_TOKENIZERS, tiny_causal_lm
from reference_bytes import BruteForce, reference_targets

from mergekd.bytes import ByteTrieIndex, byte_vocab_for, teacher_byte_logprobs, teacher_byte_logprobs_batch
from mergekd.bytes.convert import child_masses

MIXED_TEXT = (
    "The quick brown fox, 1234567 times!\n\t  日本語 e\u0301 👩‍👩‍👧 <|endoftext|> <s> ok  "
)


def _compare(targets, probs_ref, mask_ref, tol=1e-5):
    assert targets.mask.numpy().tolist() == mask_ref.tolist()
    ours = targets.logprobs[targets.mask].double().exp().numpy()
    ref = probs_ref[mask_ref]
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-5)
    assert np.abs(ours - ref).max() <= tol, f"max abs diff {np.abs(ours - ref).max():.3g}"
    assert torch.isnan(targets.logprobs[~targets.mask]).all()


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_matches_float64_bruteforce(name, tokenizers):
    tok = tokenizers(name)
    vocab = byte_vocab_for(tok, name)
    model = tiny_causal_lm(len(tok), seed=1, logit_scale=0.6)
    targets = teacher_byte_logprobs(model, tok, MIXED_TEXT)
    probs, mask = reference_targets(model, tok, vocab.token_bytes, MIXED_TEXT, max_length=512, overlap=256)
    _compare(targets, probs, mask)
    assert targets.end_logprobs is not None
    assert abs(float(targets.end_logprobs.double().exp().sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("name", ["gpt2", "mistral-v3", "gemma3"])
def test_windowed_long_text_matches_reference(name, tokenizers):
    tok = tokenizers(name)
    vocab = byte_vocab_for(tok, name)
    model = tiny_causal_lm(len(tok), seed=2, logit_scale=0.6)
    text = " ".join(ADVERSARIAL[:10])
    targets = teacher_byte_logprobs(model, tok, text, max_length=24, overlap=9, batch_size=3)
    probs, mask = reference_targets(model, tok, vocab.token_bytes, text, max_length=24, overlap=9)
    _compare(targets, probs, mask)


def test_sharp_distributions_use_float64_fallback(tokenizers):
    """Realised tokens ~100-700 nats below the top one underflow float32 but not float64: those rows must be
    recomputed in float64 and still match the brute force."""
    tok = tokenizers("gpt2")
    vocab = byte_vocab_for(tok, "gpt2")
    model = tiny_causal_lm(len(tok), seed=3, logit_scale=8.0)
    text = "Unlikely tokens everywhere: zqxj vvkw 🙃"
    targets = teacher_byte_logprobs(model, tok, text)
    probs, mask = reference_targets(model, tok, vocab.token_bytes, text, max_length=512, overlap=256)
    actual = np.frombuffer(text.encode(), dtype=np.uint8)
    realised = targets.realised_logprobs()[targets.mask]
    assert torch.isfinite(realised).all()
    assert (realised < -110).any(), "test does not exercise float32 underflow any more"
    ours = targets.logprobs[targets.mask].double().exp().numpy()
    assert np.abs(ours - probs[mask]).max() <= 1e-5
    assert np.isfinite(np.log(probs[mask][np.arange(mask.sum()), actual[mask]])).all()


def test_batch_equals_single_and_masks(tokenizers):
    tok = tokenizers("gpt2")  # no BOS: the first token's bytes have no predicting position
    model = tiny_causal_lm(len(tok), seed=4)
    texts = ["Hello world", "A much longer second text, so the batch needs right padding.", "z"]
    batch = teacher_byte_logprobs_batch(model, tok, texts, batch_size=3)
    for text, got in zip(texts, batch):
        single = teacher_byte_logprobs(model, tok, text)
        first_len = len(byte_vocab_for(tok).token_bytes[tok(text)["input_ids"][0]])
        assert not got.mask[:first_len].any() and got.mask[first_len:].all()
        torch.testing.assert_close(got.logprobs[got.mask], single.logprobs[single.mask], atol=2e-5, rtol=1e-4)


def test_bos_tokenizer_defines_every_row(tokenizers):
    tok = tokenizers("mistral-v1")  # adds <s>: every byte has a predicting position
    model = tiny_causal_lm(len(tok), seed=5)
    targets = teacher_byte_logprobs(model, tok, "Hi there")
    assert targets.mask.all()
    assert targets.logprobs[:, 256].eq(float("-inf")).all()  # end of text cannot happen inside the text


def _random_vocab(rng, n, alphabet=b"ab\x00\xff", max_len=5):
    seen = set()
    out = []
    while len(out) < n:
        b = bytes(rng.choice(list(alphabet), size=rng.integers(1, max_len + 1)))
        if b not in seen:
            seen.add(b)
            out.append(b)
    return out


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 64])
def test_child_masses_every_node_random_vocab(block_size):
    """Every trie node of a random vocabulary, every block size: masses equal direct float64 sums."""
    rng = np.random.default_rng(block_size)
    token_bytes = _random_vocab(rng, 150) + [None, None]  # two specials
    perm = rng.permutation(len(token_bytes))
    token_bytes = [token_bytes[i] for i in perm]
    index = ByteTrieIndex.build(token_bytes, num_logits=len(token_bytes) + 3, block_size=block_size)
    probs = torch.tensor(rng.dirichlet(np.full(len(token_bytes) + 3, 0.3), size=4))
    brute = BruteForce(token_bytes)
    ids, offsets = [], []
    for i, b in enumerate(token_bytes):
        for k in range(len(b or b"")):
            ids.append(i)
            offsets.append(k)
    ids_t, off_t = torch.tensor(ids), torch.tensor(offsets)
    nodes = index.nodes_for(ids_t, off_t)
    pos = torch.arange(len(ids)) % 4
    order = torch.argsort(pos, stable=True)  # child_masses takes rows sorted by position
    pos, nodes = pos[order], nodes[order]
    ids, offsets = [ids[i] for i in order], [offsets[i] for i in order]
    # one position per chunk exercises the chunk bookkeeping; logits = log(probs) through the softmax path
    masses = child_masses(index, probs.log(), pos, nodes, probs_dtype=torch.float64,
                          max_elements=probs.shape[1]).numpy()
    direct = child_masses(index, probs, pos, nodes, inputs_are_probs=True).numpy()
    np.testing.assert_allclose(masses, direct, rtol=1e-12, atol=1e-15)
    for r, (i, k) in enumerate(zip(ids, offsets)):
        prefix = token_bytes[i][:k]
        expect = np.zeros(256)
        for c, members in brute.members(prefix).items():
            expect[c] = probs[pos[r]].numpy()[members].sum()
        np.testing.assert_allclose(masses[r], expect, rtol=1e-12, atol=1e-15)
