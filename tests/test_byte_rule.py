"""The byte rule as a teacher option (issue 9): parsing, the teacher adapter, the cache, score and distill config.

The covering search itself is checked against brute-force enumeration in test_exact.py; here the question is
whether ``byte_rule=exact:K=…`` really reaches it from every entry point (and is refused when malformed), and
whether caches remember which rule made their targets.
"""

from __future__ import annotations

import math

import pytest
import torch

from teacher_fixtures import save_tiny_teacher

from mergekd.bytes import teacher_byte_logprobs
from mergekd.bytes.exact import exact_byte_logprobs
from mergekd.bytes.rule import ByteRule, parse_byte_rule
from mergekd.cache.codec import LOGPROB_BOUND
from mergekd.errors import ConfigError
from mergekd.teachers import load_teacher, resolve_teacher

TEXTS = ["The cat sat on the mat.", "Hamlet: to be, or not."]


@pytest.mark.parametrize("text,label", [
    ("canonical", "canonical"), ("", "canonical"), (None, "canonical"), ("fast", "canonical"),
    ("exact", "exact:K=8"), ("exact:K=4", "exact:K=4"), ("exact:beam=4,prune=0", "exact:K=4"),
    ("EXACT:K=none;max_states=64", "exact:K=none;max_states=64"), ("exact:k=2;prune=1e-4", "exact:K=2;prune=0.0001"),
])
def test_rule_labels_are_canonical_spellings(text, label):
    rule = parse_byte_rule(text)
    assert rule.label() == label
    assert parse_byte_rule(rule.label()) == rule  # the label round-trips


@pytest.mark.parametrize("text,needle", [
    ("exakt", "did you mean 'exact'"), ("exact:K=0", "K=0 must be ≥ 1"), ("exact:K=two", "not an integer"),
    ("exact:foo=1", "unknown option 'foo'"), ("exact:K", "has no value"), ("canonical:K=3", "takes no options"),
    ("exact:prune=1.5", "must be in [0, 1)"),
])
def test_bad_rules_name_the_fix(text, needle):
    with pytest.raises(ConfigError) as err:
        parse_byte_rule(text, "--byte-rule")
    assert needle in str(err.value) and "--byte-rule" in str(err.value)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizers):
    return save_tiny_teacher(tmp_path_factory.mktemp("rule") / "gpt2-teacher", tokenizers("gpt2"), seed=3,
                             logit_scale=2.0)


def test_spec_string_option_selects_the_rule(teacher_dir):
    resolved = resolve_teacher(f"hf:{teacher_dir}?byte_rule=exact:K=4")
    assert resolved.options.byte_rule == "exact:K=4"
    assert resolve_teacher(f"hf:{teacher_dir}", {"byte_rule": "exact"}).options.byte_rule == "exact:K=8"
    # the spec string wins over a command-line default
    assert resolve_teacher(f"hf:{teacher_dir}?byte_rule=canonical", {"byte_rule": "exact"}).options.byte_rule == "canonical"
    with pytest.raises(ConfigError, match="byte_rule"):
        resolve_teacher(f"hf:{teacher_dir}?byte_rule=exakt")


def test_teacher_with_exact_rule_returns_covering_targets(teacher_dir):
    exact_teacher = load_teacher(f"hf:{teacher_dir}?byte_rule=exact:K=4")
    fast_teacher = load_teacher(f"hf:{teacher_dir}")
    assert exact_teacher.describe()["byte_rule"] == "exact:K=4"
    got = exact_teacher.byte_targets(TEXTS)
    fast = fast_teacher.byte_targets(TEXTS)
    for text, g, f in zip(TEXTS, got, fast):
        want = exact_byte_logprobs(exact_teacher.model, exact_teacher.tokenizer, text, beam=4)
        assert torch.equal(g.mask, want.mask)
        torch.testing.assert_close(g.logprobs[g.mask], want.logprobs[want.mask], atol=1e-6, rtol=0)
        rows = g.logprobs[g.mask].double()
        torch.testing.assert_close(torch.logsumexp(rows, 1), torch.zeros(rows.shape[0], dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        # the rule changed something: the covering targets are not the canonical-path targets
        both = g.mask & f.mask
        assert (g.logprobs[both].exp() - f.logprobs[both].exp()).abs().max() > 1e-3


def test_exact_rule_refuses_text_longer_than_the_model(tmp_path, tokenizers):
    folder = save_tiny_teacher(tmp_path / "short", tokenizers("gpt2"), max_positions=16)
    teacher = load_teacher(f"hf:{folder}?byte_rule=exact:K=2")
    with pytest.raises(ConfigError, match="does not window"):
        teacher.byte_targets(["word " * 40])


def test_score_uses_the_rule(teacher_dir, tmp_path):
    from mergekd.score import actual_bytes, realised_byte_bpb, score

    data = tmp_path / "data.txt"
    data.write_text(TEXTS[0])
    fast = score(f"hf:{teacher_dir}", data, mix=None)
    exact = score(f"hf:{teacher_dir}", data, mix=None, byte_rule="exact:K=4")
    teacher = load_teacher(f"hf:{teacher_dir}")
    want = exact_byte_logprobs(teacher.model, teacher.tokenizer, TEXTS[0], beam=4)
    bpb, _ = realised_byte_bpb(want.logprobs, want.mask, actual_bytes([TEXTS[0]]), "reference")
    assert math.isclose(exact.teachers[0].bpb, bpb, rel_tol=1e-5)
    assert not math.isclose(exact.teachers[0].bpb, fast.teachers[0].bpb, rel_tol=1e-4)


def test_cache_records_the_rule_and_refuses_another(teacher_dir, tmp_path):
    from mergekd.cache import capture_cache
    from mergekd.cache.signal import CachedSignal
    from mergekd.distill.config import DistillConfig

    data = tmp_path / "train.txt"
    data.write_text("The cat sat on the mat. The dog sat on the log. ")
    spec = f"hf:{teacher_dir}"
    out = tmp_path / "cache"
    manifest = capture_cache(out, [spec], data, seq_bytes=32, top_k=255, tail=0.0, byte_rule="exact:K=4",
                             show_progress=False)
    assert manifest.teacher_options["byte_rule"] == "exact:K=4"
    assert manifest.teachers[0].describe["byte_rule"] == "exact:K=4"
    with pytest.raises(ConfigError, match="byte_rule mismatch"):
        capture_cache(out, [spec], data, seq_bytes=32, top_k=255, tail=0.0, byte_rule="canonical",
                      show_progress=False)
    # the cached rows are the covering targets (top-255 + no tail: lossless up to float16 storage)
    from mergekd.data import load_chunks

    chunks = load_chunks(data, 32)
    run = dict(teachers=[spec], student="new:llama?tokenizer=gpt2", data=data, out=tmp_path / "run", seq_bytes=32,
               cache=out, trie_kl_weight=1)
    with pytest.raises(ConfigError, match="byte_rule mismatch.*byte_rule=exact:K=4.*byte_rule=canonical"):
        CachedSignal(out, DistillConfig(**run))  # canonical run on exact targets: refused, naming both
    cfg = DistillConfig(**run, byte_rule="exact:K=4")
    signal = CachedSignal(out, cfg)
    cached = signal.per_teacher(chunks, list(range(len(chunks))))[0]
    teacher = load_teacher(spec)
    for chunk, got in zip(chunks, cached):
        want = exact_byte_logprobs(teacher.model, teacher.tokenizer, chunk, beam=4)
        fast = teacher_byte_logprobs(teacher.model, teacher.tokenizer, chunk)
        assert torch.equal(got.mask, want.mask)
        rows = got.mask & fast.mask
        # the codec keeps a stored byte's log-prob within LOGPROB_BOUND nat (module docstring of cache.codec)
        likely = want.logprobs[rows] > -6
        err_exact = (got.logprobs[rows] - want.logprobs[rows])[likely].abs().max()
        err_fast = (got.logprobs[rows] - fast.logprobs[rows])[likely].abs().max()
        assert err_exact <= LOGPROB_BOUND + 1e-4 and err_fast > 1.0  # and they are not the fast targets


def test_distill_config_validates_the_rule(tmp_path):
    from mergekd.distill.config import DistillConfig

    cfg = DistillConfig(student="new:llama?tokenizer=gpt2", data=tmp_path / "d.txt", out=tmp_path / "o", byte_rule="exact:K=2")
    assert cfg.byte_rule == "exact:K=2"
    with pytest.raises(Exception, match="byte_rule"):
        DistillConfig(student="new:llama?tokenizer=gpt2", data=tmp_path / "d.txt", out=tmp_path / "o", byte_rule="exakt")
    assert ByteRule().label() == "canonical"
