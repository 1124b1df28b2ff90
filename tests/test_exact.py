"""Exact (covering) next-byte mode against a brute-force enumeration of tokenizations, and the fidelity report.

The brute force shares nothing with mergekd.bytes.exact but the definition: on a vocabulary of a handful of
tokens it enumerates every token sequence whose bytes stay on the text, scores each with a full (cache-free)
float64 forward pass, and adds P(sequence)·P(last token) for every sequence + token that covers a prefix,
checked with plain ``bytes.startswith``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_causal_lm

from mergekd.bytes import ByteVocab, teacher_byte_logprobs
from mergekd.bytes.exact import exact_byte_logprobs, exact_search
from mergekd.errors import ConfigError
from mergekd.commands.fidelity_cmd import fidelity_command
from mergekd.fidelity import fidelity_report, sample_passages

BPE_TOKENS = ["a", "b", "c", "ab", "bc", "abc", "ca"]
BPE_MERGES = [("a", "b"), ("b", "c"), ("ab", "c"), ("c", "a")]
SP_TOKENS = ["▁", "a", "b", "▁a", "ab", "▁ab", "b▁"]
SP_MERGES = [("▁", "a"), ("a", "b"), ("▁a", "b"), ("b", "▁")]


def tiny_tokenizer(tokens, merges, scheme: str, bos: bool = True):
    """A BPE tokenizer over a few tokens (+ <s>, </s>), byte-level or SentencePiece-style (dummy prefix)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tokens)}
    vocab["<s>"], vocab["</s>"] = len(tokens), len(tokens) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if scheme == "byte-level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.add_special_tokens(["<s>", "</s>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert len(fast) == len(tokens) + 2
    return fast, ByteVocab.from_tokenizer(fast, check_lossless=False)  # the probe has characters outside a-c


def tiny_model(vocab_size: int, seed: int = 0):
    return tiny_causal_lm(vocab_size, seed=seed, logit_scale=1.5).double()


# ------------------------------------------------------------------------------------------------------------


def enumerate_covers(model, token_bytes, context: list[int], stream: bytes, start: int, eos: int):
    """float64 [len(stream)+1, 257]: P(stream[:j]·c) summed over every covering sequence (rows j ≥ start)."""
    text_ids = [i for i, b in enumerate(token_bytes) if b]
    out = np.zeros((len(stream) + 1, 257))

    def visit(seq: tuple[int, ...], spelled: bytes) -> None:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([context + list(seq)])).logits[0].double(), -1)
        seq_logp = sum(float(logp[len(context) - 1 + k, t]) for k, t in enumerate(seq))
        nxt = logp[-1].exp().numpy()
        for v in text_ids:  # the last token of a cover may run past the text
            full = spelled + token_bytes[v]
            for j in range(len(spelled), len(stream) + 1):
                if len(full) > j and full.startswith(stream[:j]):
                    out[j, full[j]] += np.exp(seq_logp) * nxt[v]
        if spelled == stream:
            out[len(stream), 256] += np.exp(seq_logp) * nxt[eos]
        for v in text_ids:  # every sequence whose bytes stay on the text is a candidate prefix
            if stream.startswith(spelled + token_bytes[v]):
                visit(seq + (v,), spelled + token_bytes[v])

    visit((), stream[:start])
    return out


def brute_force_targets(model, tok, vocab: ByteVocab, text: str):
    """(probs [N,257], mask [N], end [257]) of the exact byte LM, by enumeration."""
    ids = tok(text)["input_ids"]
    data = text.encode()
    stream = b"".join(vocab.token_bytes[i] or b"" for i in ids)  # with the dummy space where one was added
    dummy = len(stream) - len(data)
    assert dummy in (0, 1) and stream[dummy:] == data
    has_bos = vocab.token_bytes[ids[0]] is None
    context, start = (ids[:1], 0) if has_bos else (ids[:1], len(vocab.token_bytes[ids[0]]))
    cover = enumerate_covers(model, vocab.token_bytes, context, stream, start, vocab.eos_ids[0])
    rows = cover[dummy:len(stream), :].copy()
    mask = np.arange(len(data)) + dummy >= start
    rows[mask] /= rows[mask].sum(1, keepdims=True)
    end = cover[len(stream)] / cover[len(stream)].sum()
    return rows, mask, end


def max_prob_diff(targets, probs: np.ndarray, mask: np.ndarray) -> float:
    ours = targets.logprobs.double().exp().numpy()
    return float(np.abs(ours[mask] - probs[mask]).max()) if mask.any() else 0.0


CASES = [
    ("byte-level", True, ["abcab", "bcaabc", "c"]),
    ("sentencepiece", True, ["ab a", "a ab b", "bab", " a"]),
    ("byte-level", False, ["abcab", "caabc"]),
]


@pytest.mark.parametrize("scheme,bos,texts", CASES, ids=["bpe-bos", "sp-dummy-prefix", "bpe-no-bos"])
def test_exact_equals_enumeration(scheme, bos, texts):
    tokens, merges = (BPE_TOKENS, BPE_MERGES) if scheme == "byte-level" else (SP_TOKENS, SP_MERGES)
    tok, vocab = tiny_tokenizer(tokens, merges, scheme, bos=bos)
    model = tiny_model(len(tok), seed=3)
    for text in texts:
        probs, mask, end = brute_force_targets(model, tok, vocab, text)
        got = exact_byte_logprobs(model, tok, text, vocab=vocab)
        assert got.mask.numpy().tolist() == mask.tolist()
        assert torch.isnan(got.logprobs[~got.mask]).all()
        assert max_prob_diff(got, probs, mask) <= 1e-6, text
        assert (got.logprobs[got.mask, 256] == float("-inf")).all()  # the text goes on
        assert np.abs(got.end_logprobs.double().exp().numpy() - end).max() <= 1e-6
        assert got.mask.tolist() == teacher_byte_logprobs(model, tok, text, vocab=vocab).mask.tolist()
    if not bos:  # the first canonical token is the context: its bytes are undefined under both rules
        assert not got.mask[0]


def test_exact_differs_from_fast_when_tokenizations_compete():
    """The exact sum must not collapse onto the canonical path: inside "abc" it sees the boundary after "ab"."""
    tok, vocab = tiny_tokenizer(BPE_TOKENS, BPE_MERGES, "byte-level")
    model = tiny_model(len(tok), seed=3)
    exact = exact_byte_logprobs(model, tok, "abcab", vocab=vocab).logprobs.double().exp()
    fast = teacher_byte_logprobs(model, tok, "abcab", vocab=vocab).logprobs.double().exp()
    # byte 1 ("b") inside canonical token "abc": fast only allows tokens starting "a"+c, i.e. c = "b"
    assert float(fast[1, ord("b")]) == pytest.approx(1.0)
    assert float(fast[1, ord("a")]) == 0.0 == float(fast[1, ord("c")])
    assert float(exact[1, ord("a")]) > 0.0 and float(exact[1, ord("c")]) > 0.0  # boundaries "a·a…", "a·c…"
    assert float((exact[1] - fast[1]).abs().sum()) > 1e-4


def test_beam_converges_to_exact():
    tok, vocab = tiny_tokenizer(BPE_TOKENS, BPE_MERGES, "byte-level")
    model = tiny_model(len(tok), seed=5)
    text = "abcabcab"
    exact = exact_search(model, tok, text, vocab=vocab)
    ref = exact.targets.logprobs.double().exp()
    errors = {}
    for beam in (1, 2, exact.max_states_per_byte):
        got = exact_byte_logprobs(model, tok, text, vocab=vocab, beam=beam).logprobs.double().exp()
        errors[beam] = float((got - ref).abs().nan_to_num().max())
    assert errors[1] > 1e-3  # a beam of one really drops tokenizations
    assert errors[2] < errors[1]
    assert errors[exact.max_states_per_byte] <= 1e-12  # a beam as wide as the exact search is the exact search
    pruned = exact_byte_logprobs(model, tok, text, vocab=vocab, prune=0.2).logprobs.double().exp()
    assert float((pruned - ref).abs().nan_to_num().max()) > 1e-4
    barely = exact_byte_logprobs(model, tok, text, vocab=vocab, prune=1e-12).logprobs.double().exp()
    assert float((barely - ref).abs().nan_to_num().max()) <= 1e-9


def test_state_budget_refuses_instead_of_exhausting_memory():
    tok, vocab = tiny_tokenizer(BPE_TOKENS, BPE_MERGES, "byte-level")
    model = tiny_model(len(tok))
    with pytest.raises(ConfigError, match="max_states=1"):
        exact_search(model, tok, "abcab", vocab=vocab, max_states=1)
    assert exact_search(model, tok, "abcab", vocab=vocab, beam=1, max_states=1).max_states_per_byte == 1


def test_single_tokenization_vocab_fast_equals_exact():
    tok, vocab = tiny_tokenizer(["a", "b", "c"], [], "byte-level")
    model = tiny_model(len(tok), seed=7).float()
    for text in ("abcacb", "cc"):
        exact = exact_search(model, tok, text, vocab=vocab)
        assert exact.max_states_per_byte == 1
        fast = teacher_byte_logprobs(model, tok, text, vocab=vocab)
        assert exact.targets.mask.tolist() == fast.mask.tolist()
        diff = (exact.targets.logprobs.exp() - fast.logprobs.exp()).abs()
        assert float(diff[fast.mask].max()) <= 1e-6
        assert float((exact.targets.end_logprobs.exp() - fast.end_logprobs.exp()).abs().max()) <= 1e-6


def test_max_bytes_rows_match_whole_text():
    tok, vocab = tiny_tokenizer(SP_TOKENS, SP_MERGES, "sentencepiece")
    model = tiny_model(len(tok), seed=2)
    whole = exact_byte_logprobs(model, tok, "ab a ba", vocab=vocab)
    head = exact_byte_logprobs(model, tok, "ab a ba", vocab=vocab, max_bytes=4)
    assert head.mask.tolist() == [True] * 4 + [False] * 3 and head.end_logprobs is None
    assert torch.allclose(head.logprobs[:4], whole.logprobs[:4], atol=1e-6)


def test_kv_cache_path_matches_recomputation_on_a_real_vocabulary(tokenizers):
    tok = tokenizers("gpt2")
    model = tiny_causal_lm(len(tok), seed=1, logit_scale=2.0)
    text = "Hello, tokens!"
    cached = exact_search(model, tok, text, beam=3)
    fresh = exact_search(model, tok, text, beam=3, use_cache=False)
    assert cached.used_kv_cache and not fresh.used_kv_cache
    assert cached.states == fresh.states and cached.states > len(text)  # the beam was actually used
    a, b = cached.targets, fresh.targets
    assert a.mask.tolist() == b.mask.tolist() and not a.mask[0]  # GPT-2 adds no BOS
    assert float((a.logprobs.exp() - b.logprobs.exp()).abs()[a.mask].max()) <= 1e-5


# ------------------------------------------------------------------------------------------------------------

REPORT_SPLIT_KEYS = {"n", "jsd_mean", "jsd_median", "jsd_p90", "jsd_max", "kl_mean_finite", "kl_infinite_fraction",
                     "exact_mass_outside_fast", "bpb_fast", "bpb_exact"}


def test_fidelity_report_on_real_tokenizer(tokenizers):
    tok = tokenizers("gpt2")
    model = tiny_causal_lm(len(tok), seed=2, logit_scale=2.0)
    texts = ["The cat sat.", "Tokenizers!"]
    report = fidelity_report(model, tok, texts, positions=12, beam=2, seed=1)
    assert {"all", "boundary", "inside", "bpb", "cost", "positions", "bytes"} <= report.keys()
    for split in ("all", "boundary", "inside"):
        assert set(report[split]) == REPORT_SPLIT_KEYS
    assert report["positions"] == 12 == report["boundary"]["n"] + report["inside"]["n"]
    assert report["bytes"] == sum(len(t) for t in texts) - 3 - 5  # first tokens "The" and "Token" need a BOS
    assert 0.0 <= report["all"]["jsd_mean"] <= report["all"]["jsd_max"] <= 1.0
    assert 0 < report["bpb"]["fast"] <= report["bpb"]["canonical_tokens"] + 1e-5
    assert 0 < report["bpb"]["exact"]
    json.dumps(report, allow_nan=False)
    again = fidelity_report(model, tok, texts, positions=12, beam=2, seed=1)
    assert again["all"] == report["all"]


def test_fidelity_report_zero_without_competing_tokenizations():
    tok, vocab = tiny_tokenizer(["a", "b", "c"], [], "byte-level")
    model = tiny_model(len(tok), seed=4).float()
    report = fidelity_report(model, tok, ["abcab", "cab"], positions=None, beam=4, vocab=vocab)
    assert report["inside"]["n"] == 0 and report["boundary"]["n"] == 8
    assert report["all"]["jsd_max"] <= 1e-6 and report["all"]["kl_infinite_fraction"] == 0.0
    assert report["bpb"]["fast"] == pytest.approx(report["bpb"]["exact"], abs=1e-5)

    tok, vocab = tiny_tokenizer(BPE_TOKENS, BPE_MERGES, "byte-level")
    report = fidelity_report(tiny_model(len(tok), seed=4), tok, ["abcab", "cabca"], positions=None, beam=None,
                             vocab=vocab)
    assert report["inside"]["n"] > 0 and report["inside"]["jsd_mean"] > 1e-3
    assert report["inside"]["kl_infinite_fraction"] > 0  # fast gives 0 to bytes after a possible boundary
    # P(text) ≥ P(canonical tokens) for the exact LM; the fast rule's chain is ≥ it too (it knows the segmentation)
    bpb = report["bpb"]
    assert bpb["exact"] <= bpb["canonical_tokens"] + 1e-9 and bpb["fast"] <= bpb["canonical_tokens"] + 1e-6
    assert bpb["exact"] < bpb["canonical_tokens"] - 1e-4  # other tokenizations carry real mass here


def test_fidelity_command_writes_json(tmp_path, tokenizers):
    import typer
    from typer.testing import CliRunner

    from teacher_fixtures import save_tiny_teacher

    folder = save_tiny_teacher(tmp_path / "tiny", tokenizers("gpt2"))  # a real teacher folder, loaded as hf:
    data = tmp_path / "data.txt"
    data.write_text("First paragraph here.\n\nSecond one, longer than the first.\n\n\nThird.\n", encoding="utf-8")
    out = tmp_path / "report.json"
    app = typer.Typer()
    app.command("fidelity")(fidelity_command)
    app.command("other")(lambda: None)  # two commands, so typer keeps the command name
    spec = f"hf:{folder}"
    result = CliRunner().invoke(app, ["fidelity", "--teacher", spec, "--data", str(data), "--positions", "10",
                                      "--beam", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["teacher"] == spec and report["positions"] == 10 and report["beam"] == 2
    assert "JSD" in result.output


def test_sample_passages_cover_positions():
    text = "one two\nthree\n\n" + "x" * 70 + "\n\nfour\r\nfive\n" + "é" * 40
    got = sample_passages(text, positions=60, passage_bytes=30, seed=0)
    assert all(0 < len(p.encode()) <= 30 for p in got)
    assert sum(len(p.encode()) for p in got) >= 60
    every = sample_passages(text, positions=10**6, passage_bytes=30, seed=0)
    assert sorted(every) == sorted(["one two\nthree", "x" * 30, "x" * 30, "x" * 10, "four\nfive", "é" * 15,
                                    "é" * 15, "é" * 10])
    assert sample_passages(text, 60, 30, 0) == got
