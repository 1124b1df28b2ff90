"""Tokenizers with an NFC normaliser (Qwen2.5/Qwen3 hub tokenizers): accepted, exact on NFC text, refused or
masked per text on text that is not NFC, and lowercasing normalisers still refused at construction.

The NFC tokenizer is the offline Qwen2.5 one with ``"normalizer": {"type": "NFC"}`` put back into its JSON, as
the hub's tokenizer.json carries it. Models are tiny random Llamas; references are the float64 brute force.
"""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from conftest import ADVERSARIAL, tiny_causal_lm
from reference_bytes import reference_targets

from mergekd.assets import text_slice
from mergekd.bytes import ByteVocab, byte_vocab_for, teacher_byte_logprobs, teacher_byte_logprobs_batch
from mergekd.bytes.exact import exact_byte_logprobs
from mergekd.bytes.vocab import normalisation_segments, normalizer_form
from mergekd.errors import ConfigError, LossyTokenizerError, UnnormalisedTextError
from mergekd.teachers import resolve_teacher
from mergekd.teachers.adapter import Teacher
from mergekd.teachers.options import TeacherOptions

NFC_ADVERSARIAL = [t for t in ADVERSARIAL if unicodedata.is_normalized("NFC", t)]
# (piece, changed by NFC): the expected byte map follows from this construction, not from the code under test
PIECES = [("Caf", False), ("e\u0301", True), (" na", False), ("i\u0308", True), ("ve r", False),
          ("e\u0301", True), ("sum", False), ("e\u0301", True), (" \u212b", True),
          (" and plain words, 日本語 ok.", False)]
NOT_NFC = "".join(p for p, _ in PIECES)


def _with_normalizer(tok, normalizer) -> PreTrainedTokenizerFast:
    """``tok`` rebuilt from its own JSON with ``normalizer`` put in, keeping its special tokens and EOS."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["normalizer"] = normalizer
    extra = [t for t in tok.all_special_tokens if t not in (tok.eos_token, tok.bos_token)]
    out = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token=tok.eos_token,
                                  bos_token=tok.bos_token, additional_special_tokens=extra)
    assert len(out) == len(tok)
    return out


@pytest.fixture(scope="module")
def qwen(tokenizers):
    return tokenizers("qwen2.5")


@pytest.fixture(scope="module")
def qwen_nfc(qwen):
    return _with_normalizer(qwen, {"type": "NFC"})


@pytest.fixture(scope="module")
def model(qwen):
    return tiny_causal_lm(len(qwen), seed=7, logit_scale=0.6)


def _compare(targets, probs_ref, mask_ref, tol=1e-5):
    """As in test_bytes_convert: same mask, rows within ``tol`` of the brute force, undefined rows NaN."""
    assert targets.mask.numpy().tolist() == mask_ref.tolist()
    ours = targets.logprobs[targets.mask].double().exp().numpy()
    assert np.abs(ours - probs_ref[mask_ref]).max() <= tol, f"max abs diff {np.abs(ours - probs_ref[mask_ref]).max()}"
    assert torch.isnan(targets.logprobs[~targets.mask]).all()


def _expected_map(tok_bytes: list[bytes]) -> tuple[np.ndarray, int]:
    """From PIECES: NFC byte → text byte, -1 for bytes of changed pieces and of tokens touching them."""
    text_pos, changed = [], []
    offset = 0
    for piece, is_changed in PIECES:
        normal = unicodedata.normalize("NFC", piece).encode()
        assert (normal != piece.encode()) == is_changed
        text_pos += [-1] * len(normal) if is_changed else list(range(offset, offset + len(normal)))
        changed += [is_changed] * len(normal)
        offset += len(piece.encode())
    out, start = np.asarray(text_pos), 0
    for b in tok_bytes:
        if any(changed[start:start + len(b)]):
            out[start:start + len(b)] = -1
        start += len(b)
    return out, len(NOT_NFC.encode()) - int((out >= 0).sum())


# ------------------------------------------------------------------------------------------------------------


def test_nfc_tokenizer_is_accepted_with_the_same_vocabulary(qwen, qwen_nfc):
    vocab = ByteVocab.from_tokenizer(qwen_nfc, name="qwen2.5-nfc")
    plain = byte_vocab_for(qwen, "qwen2.5")
    assert vocab.normalizer == "NFC" and plain.normalizer is None
    assert vocab.fingerprint() == plain.fingerprint()
    assert vocab.eos_ids == plain.eos_ids


@pytest.mark.parametrize("node,form", [
    ({"type": "NFC"}, "NFC"), ({"type": "Sequence", "normalizers": [{"type": "NFC"}]}, "NFC"), (None, None),
    ({"type": "NFKC"}, None), ({"type": "NFD"}, None), ({"type": "Lowercase"}, None),
    ({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "NFKC"}]}, None),
])
def test_normalizer_form_accepts_only_nfc(node, form):
    assert normalizer_form(node) == form


def test_nfc_text_targets_equal_reference_and_unnormalised_tokenizer(qwen, qwen_nfc, model):
    """On NFC text the normaliser is the identity: same tokens, the brute force's rows, the plain tokenizer's."""
    texts = NFC_ADVERSARIAL + [text_slice("botchan", 20000, 20400)]
    nfc = teacher_byte_logprobs_batch(model, qwen_nfc, texts, batch_size=4)
    plain = teacher_byte_logprobs_batch(model, qwen, texts, batch_size=4)
    for text, got, ref in zip(texts, nfc, plain):
        assert got.masked_lossy == 0
        assert torch.equal(got.mask, ref.mask)
        torch.testing.assert_close(got.logprobs, ref.logprobs, equal_nan=True, atol=0, rtol=0)
    text = "\n".join(texts)  # one brute-force run (its prefix sums are cached per run), ~330 tokens
    got = teacher_byte_logprobs(model, qwen_nfc, text)
    token_bytes = byte_vocab_for(qwen_nfc).token_bytes
    _compare(got, *reference_targets(model, qwen_nfc, token_bytes, text, max_length=512, overlap=256))


def test_unnormalised_text_is_refused_by_default(qwen_nfc, model):
    with pytest.raises(UnnormalisedTextError) as err:
        teacher_byte_logprobs(model, qwen_nfc, NOT_NFC)
    assert isinstance(err.value, LossyTokenizerError)
    message = str(err.value)
    assert "first difference at byte 3" in message  # "Caf" then b"e" (text) vs b"\xc3" (tokens spell é)
    assert "not in NFC form" in message and "lossy_text=mask" in message and "normalize" in message


def test_mask_option_masks_touched_tokens_and_keeps_the_rest_exact(qwen_nfc, model):
    """Unmasked rows equal the brute force on the NFC text's tokens at the corresponding NFC byte."""
    vocab = byte_vocab_for(qwen_nfc)
    nfc_text = unicodedata.normalize("NFC", NOT_NFC)
    got = teacher_byte_logprobs(model, qwen_nfc, NOT_NFC, lossy_text="mask")
    assert got.text_bytes == NOT_NFC.encode() and got.logprobs.shape == (len(NOT_NFC.encode()), 257)
    ids = qwen_nfc(nfc_text, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    expected_map, expected_masked = _expected_map([vocab.token_bytes[i] or b"" for i in ids])
    assert got.masked_lossy == expected_masked > 0
    probs, mask = reference_targets(model, qwen_nfc, vocab.token_bytes, nfc_text, max_length=512, overlap=256)
    kept = expected_map >= 0
    ref_probs = np.full((len(NOT_NFC.encode()), 257), np.nan)
    ref_mask = np.zeros(len(NOT_NFC.encode()), dtype=bool)
    ref_probs[expected_map[kept]] = probs[kept]
    ref_mask[expected_map[kept]] = mask[kept]
    _compare(got, ref_probs, ref_mask)
    assert got.end_logprobs is not None


def test_mask_option_on_nfc_text_changes_nothing(qwen_nfc, model):
    text = NFC_ADVERSARIAL[5]
    a = teacher_byte_logprobs(model, qwen_nfc, text)
    b = teacher_byte_logprobs(model, qwen_nfc, text, lossy_text="mask")
    assert b.masked_lossy == 0
    torch.testing.assert_close(a.logprobs, b.logprobs, equal_nan=True, atol=0, rtol=0)


def test_exact_rule_masks_the_same_rows(qwen_nfc, model):
    """The covering rule runs on the NFC bytes and maps its rows through the same byte map."""
    text = "Cafe\u0301 ok"
    got = exact_byte_logprobs(model, qwen_nfc, text, beam=2, lossy_text="mask")
    fast = teacher_byte_logprobs(model, qwen_nfc, text, lossy_text="mask")
    ref = exact_byte_logprobs(model, qwen_nfc, unicodedata.normalize("NFC", text), beam=2)
    assert got.masked_lossy == fast.masked_lossy > 0
    assert torch.equal(got.mask, fast.mask)
    torch.testing.assert_close(got.logprobs[-3:], ref.logprobs[-3:], atol=0, rtol=0)  # " ok" after the é
    assert got.mask[-3:].all()
    with pytest.raises(UnnormalisedTextError):
        exact_byte_logprobs(model, qwen_nfc, text, beam=2)


def test_teacher_option_reaches_the_byte_core(qwen_nfc, model):
    spec = resolve_teacher("hf:Qwen/Qwen2.5-0.5B?lossy_text=mask")
    assert spec.options.lossy_text == "mask"
    assert resolve_teacher("hf:Qwen/Qwen2.5-0.5B").options.lossy_text == "refuse"
    with pytest.raises(ConfigError, match="lossy_text"):
        resolve_teacher("hf:Qwen/Qwen2.5-0.5B?lossy_text=drop")
    masked = Teacher("qwen-nfc", model, qwen_nfc, options=TeacherOptions(lossy_text="mask"))
    [targets] = masked.byte_targets([NOT_NFC])
    assert targets.masked_lossy > 0 and targets.mask.any()
    with pytest.raises(UnnormalisedTextError):
        Teacher("qwen-nfc", model, qwen_nfc).byte_targets([NOT_NFC])


def test_lossy_text_value_is_checked(qwen_nfc):
    with pytest.raises(ConfigError, match="lossy_text"):
        byte_vocab_for(qwen_nfc).align("abc", lossy_text="drop")


def test_lowercasing_tokenizer_is_still_refused_at_construction(qwen):
    tok = _with_normalizer(qwen, {"type": "Lowercase"})
    with pytest.raises(LossyTokenizerError) as err:
        ByteVocab.from_tokenizer(tok, name="qwen-lower")
    message = str(err.value)
    assert "qwen-lower" in message and "first difference at byte" in message and "does not reproduce" in message


@pytest.mark.parametrize("normalizer", [
    {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]},
    {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "NFKC"}]},
    {"type": "NFD"},
])
def test_nfc_next_to_a_text_changing_normaliser_is_refused(tokenizers, normalizer):
    tok = _with_normalizer(tokenizers("gpt2"), normalizer)
    with pytest.raises(LossyTokenizerError, match="first difference at byte"):
        ByteVocab.from_tokenizer(tok, name="gpt2-normalised")


def test_nfc_inside_a_sequence_is_accepted(tokenizers):
    tok = _with_normalizer(tokenizers("gpt2"), {"type": "Sequence", "normalizers": [{"type": "NFC"}]})
    assert ByteVocab.from_tokenizer(tok, name="gpt2-nfc").normalizer == "NFC"


def test_segments_normalise_independently_on_tricky_text():
    """Hangul jamo, Indic/Tibetan vowel signs, reordered marks, singletons: segments joined = NFC of the text
    (normalisation_segments checks it and raises otherwise), and 'changed' is exactly 'NFC moved a byte'."""
    pool = ["a", "e", " ", "\u0301", "\u0323", "\u0307", "\u1100", "\u1161", "\u11a8", "\uac00", "\u0b47",
            "\u0b3e", "\u0cc6", "\u0cc2", "\u0f71", "\u0f72", "\u0f73", "\u212b", "\uf900", "\u00e9", "x"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        text_len, norm_len, changed = normalisation_segments(text, "NFC")
        assert text_len.sum() == len(text.encode())
        assert norm_len.sum() == len(unicodedata.normalize("NFC", text).encode())
        assert changed.any() == (not unicodedata.is_normalized("NFC", text))
