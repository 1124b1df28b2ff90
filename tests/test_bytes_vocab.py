"""ByteVocab on real tokenizers: exact bytes, adversarial round trips, and loud failures on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import ADVERSARIAL, REAL_TOKENIZERS, tiny_causal_lm

from mergekd.bytes import ByteVocab, byte_vocab_for, teacher_byte_logprobs
from mergekd.errors import EmptyTextError, LossyTokenizerError, NonFiniteError, TokenizerError, VocabMismatchError

EXPECTED = {  # name: (scheme, ids, dummy prefix)
    "gpt2": ("byte-level", 50257, False),
    "qwen2.5": ("byte-level", 151646, False),
    "cl100k": ("byte-level", 100257, False),
    "smollm2": ("byte-level", 49152, False),
    "mistral-v1": ("sentencepiece", 32000, True),
    "mistral-v3": ("sentencepiece", 32768, True),
    "gemma3": ("sentencepiece", 262144, False),
}


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_scheme_size_and_specials(name, tokenizers):
    tok = tokenizers(name)
    vocab = byte_vocab_for(tok, name)
    scheme, size, dummy = EXPECTED[name]
    assert (vocab.scheme, len(vocab), vocab.adds_dummy_prefix) == (scheme, size, dummy)
    for sid in tok.all_special_ids:
        assert vocab.token_bytes[sid] is None
    assert vocab.eos_ids and vocab.token_bytes[vocab.eos_ids[0]] is None
    assert len(vocab.fingerprint()) == 64


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_adversarial_texts_round_trip(name, tokenizers):
    """The tokenizer's own ids, spelled with our bytes, give back every adversarial text exactly."""
    tok = tokenizers(name)
    vocab = byte_vocab_for(tok, name)
    for text in ADVERSARIAL:
        ids = tok(text, add_special_tokens=True, split_special_tokens=True)["input_ids"]
        spelled = vocab.decode_bytes(ids)
        expected = text.encode("utf-8")
        assert spelled in (expected, b" " + expected), (name, text)
        align = vocab.align(text)
        body = align.token_len > 0
        # spans tile the text: each starts where the previous ended
        starts, lens = align.token_start[body], align.token_len[body]
        assert int(starts[0]) == -align.prefix_len
        assert torch.equal(starts[1:], (starts + lens)[:-1])
        assert int(starts[-1] + lens[-1]) == len(expected)


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_bytes_agree_with_tokenizer_decode(name, tokenizers):
    """For tokens that are whole UTF-8 text, our bytes equal what the tokenizer itself decodes."""
    tok = tokenizers(name)
    vocab = byte_vocab_for(tok, name)
    step = max(1, len(vocab) // 3000)
    checked = 0
    for i in range(0, len(vocab), step):
        b = vocab.token_bytes[i]
        if b is None:
            continue
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        # decode a known anchor before the token so SentencePiece's leading-space strip cannot hide a space
        anchor = tok("x", add_special_tokens=False)["input_ids"]
        decoded = tok.decode(anchor + [i], clean_up_tokenization_spaces=False)
        assert decoded.endswith(text), (name, i, b, decoded)
        checked += 1
    assert checked > 500


def test_unicode_metaspace_char_is_refused_by_sentencepiece(tokenizers):
    """U+2581 is a space to SentencePiece-style vocabularies: such text cannot be spelled exactly."""
    gemma = byte_vocab_for(tokenizers("gemma3"), "gemma3")
    with pytest.raises(LossyTokenizerError, match="first difference at byte"):
        gemma.align("a\u2581b")
    gpt2 = byte_vocab_for(tokenizers("gpt2"), "gpt2")
    assert gpt2.align("a\u2581b").num_bytes == 5  # byte-level BPE spells anything


def _gpt2_with_normalizer(tokenizers, normalizer: dict):
    spec = json.loads(tokenizers("gpt2").backend_tokenizer.to_str())
    spec["normalizer"] = normalizer
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>")


@pytest.mark.parametrize("normalizer", [{"type": "Lowercase"}, {"type": "NFKC"}])
def test_normalising_tokenizer_is_refused(tokenizers, normalizer):
    tok = _gpt2_with_normalizer(tokenizers, normalizer)
    with pytest.raises(LossyTokenizerError) as err:
        ByteVocab.from_tokenizer(tok, name="gpt2-normalised")
    message = str(err.value)
    assert "gpt2-normalised" in message and "first difference at byte" in message


def test_wordpiece_tokenizer_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]")
    with pytest.raises(TokenizerError, match="unsupported scheme"):
        ByteVocab.from_tokenizer(tok, name="tiny-wordpiece")


def test_empty_text_is_an_error(tokenizers):
    tok = tokenizers("gpt2")
    model = tiny_causal_lm(len(tok))
    with pytest.raises(EmptyTextError):
        teacher_byte_logprobs(model, tok, "")


def test_model_tokenizer_vocab_mismatch(tokenizers):
    tok = tokenizers("mistral-v1")
    with pytest.raises(VocabMismatchError, match="32000 ids"):
        teacher_byte_logprobs(tiny_causal_lm(1000), tok, "hello")
    with pytest.raises(VocabMismatchError, match="far more"):
        teacher_byte_logprobs(tiny_causal_lm(len(tokenizers("gpt2"))), tok, "hello")
    # modest output-layer padding (as Qwen2.5 ships) is accepted; padded ids carry no mass as text
    targets = teacher_byte_logprobs(tiny_causal_lm(len(tok) + 64), tok, "hello")
    assert targets.mask.all()


def test_nan_logits_are_refused(tokenizers):
    tok = tokenizers("mistral-v1")
    model = tiny_causal_lm(len(tok))
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        teacher_byte_logprobs(model, tok, "hello there")
