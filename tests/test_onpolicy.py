"""On-policy distillation and prompt/response data, at tiny scale with real tokenizers.

Teachers are tiny random LMs over the GPT-2 and Mistral-v1 vocabularies, held in memory and handed to
``distill(..., teachers=...)`` so no test pays for loading them twice; the student is a fresh 1-layer Llama over
the Mistral-v3 vocabulary (a third tokenizer), so every on-policy sample crosses three tokenizations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_causal_lm

from mergekd.errors import ConfigError

STUDENT = "new:llama?tokenizer=mistral-v3&layers=1&hidden=32&heads=2&ctx=256"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizers):
    """Two tiny teachers of different tokenizers (saved as hf: folders and also held in memory, so runs reuse them
    without reloading), plain-text and prompt/response data, a base config."""
    from mergekd.assets import read_text
    from mergekd.teachers.adapter import Teacher

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onpolicy")
    teachers = []
    for i, name in enumerate(["gpt2", "mistral-v1"]):
        model = tiny_causal_lm(len(tokenizers(name)), seed=20 + i, logit_scale=0.5)
        folder = root / f"tiny-{name}"  # saved, so the run's teacher specs are real, validated hf: specs
        model.save_pretrained(str(folder))
        tokenizers(name).save_pretrained(str(folder))
        teachers.append(Teacher(f"hf:{folder}", model, tokenizers(name)))
    text = read_text("botchan")
    (root / "train.txt").write_text(text[:4000])
    lines = text[4000:9000].split("\n")
    pairs = [{"prompt": f"Q: {a.strip()}\nA:", "response": f" {b.strip()}"}
             for a, b in zip(lines[0::2], lines[1::2]) if a.strip() and b.strip()][:24]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = {"teachers": [t.name for t in teachers], "student": STUDENT, "device": "cpu", "batch_size": 4,
              "seq_bytes": 128, "prompt_bytes": 24, "max_new_tokens": 16, "teacher_max_length": 128,
              "kl_weight": 1.0, "save_every": 100, "recipe": "bld"}  # measured with the byte head's KL
    return root, teachers, config


def _cfg(world, **kw):
    from mergekd.distill import load_config

    root, _, base = world
    return load_config(None, {**base, **kw})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_on_policy_samples_scores_and_learns(world):
    """Every batch sampled by the student, scored by two teachers of other tokenizers, and the divergence on
    the student's own (ever-changing) samples falls. The exported student can then be scored by sample_bpb."""
    from mergekd.distill import distill
    from mergekd.distill.onpolicy import sample_bpb

    root, teachers, _ = world
    out = root / "learn"
    cfg = _cfg(world, data=str(root / "train.txt"), out=str(out), steps=12, on_policy=1, kl_loss="reverse-kl",
               lr=1e-2, warmup_steps=0)
    final = distill(cfg, show_progress=False, teachers=teachers)

    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(r["on_policy"] for r in rows) and all(r["sample_bytes"] > 0 for r in rows)
    assert all("token_ce" in r and r["loss"] == pytest.approx(r["kl"], abs=1e-5) for r in rows)  # KL only
    kl = [r["kl"] for r in rows]
    assert sum(kl[-3:]) / 3 < 0.85 * sum(kl[:3]) / 3, kl

    samples = _rows(out / "samples.jsonl")
    assert len(samples) == 12 * 4 and [s["step"] for s in samples[:4]] == [1] * 4
    chunks = (root / "train.txt").read_bytes().decode("utf-8")
    for s in samples:
        assert s["prompt"] in chunks and len(s["prompt"].encode()) <= 24  # a chunk's first bytes
        assert s["sample"].encode("utf-8").decode("utf-8") == s["sample"]
    assert any(s["sample"] for s in samples)

    prompts = [s["prompt"] for s in samples[:4]]
    a = sample_bpb(final, prompts, teachers, max_new_tokens=8, seed=3)
    b = sample_bpb(final, prompts, teachers, max_new_tokens=8, seed=3)
    assert a["samples"] == b["samples"] and a["mixture"]["bpb"] == b["mixture"]["bpb"]  # deterministic
    assert a["sample_bytes"] > 0 and a["mixture"]["bytes"] > 0
    for t in teachers:
        assert 0 < a["teachers"][t.name]["bpb"] < 64 and a["teachers"][t.name]["bytes"] <= a["sample_bytes"]
    assert 0 < a["mixture"]["bpb"] < 64


def test_prompt_bytes_are_masked_out_of_every_loss_term(world, tokenizers):
    """Prompt/response data: a prompt-region teacher row, byte or token never reaches the loss."""
    from mergekd.bytes import byte_vocab_for
    from mergekd.distill.batch import build_student_batch
    from mergekd.distill.objective import LossWeights, StudentWithHead
    from mergekd.distill.prompts import read_data
    from mergekd.student import build_byte_head, load_student

    root, _, _ = world
    data = read_data(root / "pairs.jsonl", seq_bytes=128, prompt_bytes=24, need_response=True)
    assert data.kind == "prompt"
    ex = data.examples[:3]
    for e in ex:
        assert e.text.encode()[:e.loss_from] == e.prompt.encode() and len(e.text.encode()) <= 128
    student, tok = load_student(STUDENT)
    vocab = byte_vocab_for(tok)
    texts, firsts = [e.text for e in ex], [e.loss_from for e in ex]
    batch, offsets = build_student_batch(vocab, texts, 4, 256, 0, firsts)
    rows = batch.head_text_row[batch.head_valid]
    local = rows - offsets[batch.head_example.unsqueeze(1).expand_as(batch.head_valid)[batch.head_valid]]
    first_of_row = torch.tensor(firsts)[batch.head_example.unsqueeze(1).expand_as(batch.head_valid)[batch.head_valid]]
    assert bool((local >= first_of_row).all())  # supervised byte rows lie in the response
    # token CE: a token counts only when it spells a response byte
    for e, text in enumerate(texts):
        al = vocab.align(text)
        ends = (al.token_start + al.token_len)[1:]
        kept = batch.target_ids[e, : al.token_ids.numel() - 1] != -100
        assert bool((ends[kept] > firsts[e]).all()) and bool(kept.any())

    torch.manual_seed(0)
    model = StudentWithHead(student, build_byte_head("parallel", student.config.hidden_size, 4))
    n = int(offsets[-1])
    teacher = torch.log_softmax(torch.randn(n, 257), -1)
    mask = torch.ones(n, dtype=torch.bool)
    weights = LossWeights(1.0, 1.0, 1.0, "jsd", 1.0)
    with torch.no_grad():
        base = model(batch, teacher, mask, weights)
        in_prompt = torch.zeros(n, dtype=torch.bool)
        for e in range(3):
            in_prompt[int(offsets[e]): int(offsets[e]) + firsts[e]] = True
        changed = teacher.clone()
        changed[in_prompt] = torch.log_softmax(torch.randn(int(in_prompt.sum()), 257) * 5, -1)
        same = model(batch, changed, mask, weights)
        changed_resp = teacher.clone()
        changed_resp[~in_prompt] = torch.log_softmax(torch.randn(int((~in_prompt).sum()), 257) * 5, -1)
        other = model(batch, changed_resp, mask, weights)
    assert float(same["loss"]) == float(base["loss"]) and float(same["kl"]) == float(base["kl"])
    assert float(other["kl"]) != float(base["kl"])
    # and a prompt-only edit of the text changes nothing but the prompt's context: loss rows are the same count
    unmasked, _ = build_student_batch(vocab, texts, 4, 256, 0)
    assert int(batch.head_valid.sum()) < int(unmasked.head_valid.sum())


def test_resume_is_exact_with_on_policy_and_prompt_data(world):
    """λ = 0.5 over prompt/response data (off-policy steps masked, on-policy steps sampled): 4 steps straight
    equal 2 steps, then a rerun to 4 on the same folder — weights, samples and metrics. The whole run is
    warm-up, so the learning rate of a step does not depend on ``steps``."""
    from mergekd.distill import distill
    from mergekd.distill.onpolicy import is_on_policy_step

    root, teachers, _ = world
    kinds = [is_on_policy_step(s, 0.5, 5) for s in range(4)]
    assert any(kinds) and not all(kinds), kinds  # seed 5 mixes both kinds of step
    common = dict(data=str(root / "pairs.jsonl"), on_policy=0.5, seed=5, kl_loss="jsd", warmup_steps=4, lr=5e-3,
                  mix="softmax-ce", save_every=1)
    distill(_cfg(world, out=str(root / "straight"), steps=4, **common), show_progress=False, teachers=teachers)
    distill(_cfg(world, out=str(root / "resumed"), steps=2, **common), show_progress=False, teachers=teachers)
    with (root / "resumed" / "samples.jsonl").open("a") as fh:  # work a crash threw away, and a torn line
        fh.write(json.dumps({"step": 3, "index": 0, "prompt": "lost", "sample": "lost"}) + "\n{\"step\": 3, \"pro")
    distill(_cfg(world, out=str(root / "resumed"), steps=4, **common), show_progress=False, teachers=teachers)

    a = load_file(str(root / "straight" / "final" / "model.safetensors"))
    b = load_file(str(root / "resumed" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert (root / "straight" / "samples.jsonl").read_text() == (root / "resumed" / "samples.jsonl").read_text()
    metrics = _rows(root / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert [r["on_policy"] for r in metrics] == kinds
    samples = _rows(root / "straight" / "samples.jsonl")
    assert sorted({s["step"] for s in samples}) == [s + 1 for s in range(4) if kinds[s]]
    assert all(s["prompt"].endswith("\nA:") and len(s["prompt"].encode()) <= 24 for s in samples)  # prompt tails
    for folder in ("straight", "resumed"):
        shutil.rmtree(root / folder)


def test_sampled_bytes_are_cut_to_whole_characters_and_stop_at_specials(tokenizers):
    from mergekd.bytes import byte_vocab_for
    from mergekd.distill.onpolicy import _to_sample, fit_context
    from mergekd.text import utf8_prefix, utf8_suffix, valid_utf8_prefix

    vocab = byte_vocab_for(tokenizers("gpt2"))
    ids = vocab.tokenize("ok 日本語")
    # find a token boundary inside a character: GPT-2 spells CJK characters over several byte tokens
    cut = next(i for i in range(1, len(ids)) if valid_utf8_prefix(vocab.decode_bytes(ids[:i])) != vocab.decode_bytes(ids[:i]))
    s = _to_sample("x", ids[:cut], vocab)
    assert s.trimmed > 0 and ("ok 日本語").startswith(s.continuation) and s.continuation.startswith("ok")
    eos = vocab.tokenizer.eos_token_id
    s = _to_sample("x", vocab.tokenize(" a b") + [eos] + vocab.tokenize(" c"), vocab)
    assert s.continuation == " a b" and s.trimmed == 0
    assert valid_utf8_prefix(b"ab\xe6\x97") == b"ab" and valid_utf8_prefix(b"a\xffb") == b"a"
    assert utf8_prefix("日本".encode(), 4) == "日".encode() and utf8_prefix("日".encode(), 1) == "日".encode()
    assert utf8_suffix("日本".encode(), 4) == "本".encode()
    long = _to_sample("p", vocab.tokenize(" word" * 40), vocab)
    fitted = fit_context(vocab, long, 20)
    assert len(vocab.align(fitted.text).token_ids) <= 20 and long.continuation.startswith(fitted.continuation)


def test_config_and_data_errors_name_the_field_and_line(world, tokenizers):
    from mergekd.distill.prompts import read_data
    from mergekd.errors import EmptyTextError

    root, _, _ = world
    train = str(root / "train.txt")
    with pytest.raises(ConfigError, match="cache: a byte cache .* cannot cover text the student samples"):
        _cfg(world, data=train, out="x", on_policy=0.5, cache=str(root))
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(ConfigError, match=r"on_policy: .*between 0 and 1"):
            _cfg(world, data=train, out="x", on_policy=bad)
    with pytest.raises(ConfigError, match="on_policy: on-policy batches are scored by teachers"):
        _cfg(world, data=train, out="x", on_policy=1, teachers=[], kl_weight=None)  # weights at their defaults
    with pytest.raises(ConfigError, match="kl_weight=1 needs teacher rows"):
        _cfg(world, data=train, out="x", on_policy=1, teachers=[])  # a weight set without teachers: refused
    with pytest.raises(ConfigError, match="kl_weight"):
        _cfg(world, data=train, out="x", on_policy=1, kl_weight=0)
    with pytest.raises(ConfigError, match="prompt_bytes"):
        _cfg(world, data=train, out="x", on_policy=1, prompt_bytes=128)
    with pytest.raises(ConfigError, match="top_p"):
        _cfg(world, data=train, out="x", on_policy=1, top_p=0)
    assert _cfg(world, data=train, out="x", on_policy=True).on_policy == 1.0
    off = _cfg(world, data=train, out="x")
    assert off.fingerprint() == _cfg(world, data=train, out="x", max_new_tokens=99).fingerprint()
    assert _cfg(world, data=train, out="x", on_policy=0.5).fingerprint() != off.fingerprint()

    bad = root / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n\n{"response": "c"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:3: missing field 'prompt'"):
        read_data(bad, seq_bytes=64, prompt_bytes=16)
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: missing field 'response'.*on_policy 1"):
        read_data(bad, seq_bytes=64, prompt_bytes=16)
    assert read_data(bad, seq_bytes=64, prompt_bytes=16, need_response=False).examples[1].prompt == "c"
    bad.write_text('{"question": "a"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: each line needs a field 'text'.*'prompt'.*'messages'"):
        read_data(bad, seq_bytes=64, prompt_bytes=16)
    bad.write_text("")
    with pytest.raises(EmptyTextError):
        read_data(bad, seq_bytes=64, prompt_bytes=16)

    chat = root / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi there"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")
    with pytest.raises(ConfigError, match=r"chat.jsonl:1: .*has none"):
        read_data(chat, seq_bytes=256, prompt_bytes=128, tokenizer=tokenizers("gpt2"))
    ex = read_data(chat, seq_bytes=256, prompt_bytes=128, tokenizer=tokenizers("smollm2")).examples[0]
    assert "Hi there" in ex.prompt and ex.text[len(ex.prompt):].startswith("Hello!")
    assert ex.loss_from == len(ex.prompt.encode())


def test_cli_on_policy_flag(world):
    from typer.testing import CliRunner

    from mergekd.cli import app

    root, _, _ = world
    result = CliRunner().invoke(app, ["distill", "--teachers", "gpt2-tiny", "--student", STUDENT, "--data",
                                      str(root / "train.txt"), "--out", str(root / "cli"), "--on-policy", "2"])
    assert isinstance(result.exception, ConfigError) and "on_policy" in str(result.exception)
    result = CliRunner().invoke(app, ["distill", "--cache", str(root), "--student", STUDENT, "--data",
                                      str(root / "train.txt"), "--out", str(root / "cli"), "--on-policy", "1"])
    assert isinstance(result.exception, ConfigError) and "cache" in str(result.exception)
