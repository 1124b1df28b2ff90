"""Teacher adapter, spec strings, registry plugins, loaders and the GGUF → safetensors cache (fast, tiny models).

The real pretrained teachers are exercised by the ``slow`` test in ``test_score.py``.
"""

from __future__ import annotations

import json
import math
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_causal_lm
from teacher_fixtures import lowercasing_tokenizer, save_tiny_teacher, write_tiny_gguf

from mergekd.bytes import teacher_byte_logprobs
from mergekd.errors import ConfigError, LossyTokenizerError, MergekdError, UnknownNameError, VocabMismatchError
from mergekd.teachers import (TEACHERS, MissingTeacherError, Teacher, TeacherSpec, load_teacher, registered_spec,
                              resolve_teacher)
from mergekd.teachers import gguf_cache
from mergekd.teachers.loaders import load_folder
from mergekd.teachers.options import TeacherOptions
from mergekd.teachers.vocab_cache import VOCAB_FILE, load_byte_vocab, save_byte_vocab

TEXT = "The quick brown fox jumps over the lazy dog.\n\tIt was 1906; 日本語 and 😀 too. <|endoftext|> <s> end "
LONG = " ".join(f"Sentence {i} is about item {i * 7}." for i in range(8))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, tokenizers):
    return save_tiny_teacher(tmp_path_factory.mktemp("gpt2-tiny"), tokenizers("gpt2"), seed=1)


@pytest.fixture(scope="module")
def mistral_folder(tmp_path_factory, tokenizers):
    return save_tiny_teacher(tmp_path_factory.mktemp("mistral-tiny"), tokenizers("mistral-v3"), seed=2,
                             max_positions=4096)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Teacher caches go to a temporary folder (tokenizer caches stay where they are)."""
    root = tmp_path / "teacher-cache"
    monkeypatch.setattr(gguf_cache, "teachers_cache_root", lambda: root)
    return root


# ------------------------------------------------------------------------------------------------------------
# Adapter on tiny random models with real tokenizers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which,bos", [("gpt2", False), ("mistral", True)])
def test_hf_folder_teacher_matches_byte_core(which, bos, gpt2_folder, mistral_folder):
    folder = gpt2_folder if which == "gpt2" else mistral_folder
    teacher = load_teacher(f"hf:{folder}")
    assert isinstance(teacher, Teacher) and teacher.family == "llama"
    assert len(teacher.vocab) == len(teacher.tokenizer)
    got = teacher.byte_targets([TEXT, "Second text."])
    assert [g.num_bytes for g in got] == [len(TEXT.encode()), len("Second text.")]
    for g in got:
        rows = g.logprobs[g.mask].double().exp().sum(1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
    # with BOS every byte has a predicting position; without it the first token's bytes have none
    assert bool(got[0].mask.all()) is bos
    assert bool(got[0].mask[-20:].all())
    direct = teacher_byte_logprobs(teacher.model, teacher.tokenizer, TEXT, max_length=teacher.max_length,
                                   overlap=teacher.overlap)
    assert torch.equal(direct.mask, got[0].mask)
    torch.testing.assert_close(direct.logprobs[direct.mask], got[0].logprobs[got[0].mask])


def test_window_options_reach_the_byte_core(gpt2_folder):
    teacher = load_teacher(f"hf:{gpt2_folder}?max_length=16&overlap=5&batch_size=2")
    assert (teacher.max_length, teacher.overlap, teacher.batch_size) == (16, 5, 2)
    got = teacher.byte_targets([LONG])[0]
    ref = teacher_byte_logprobs(teacher.model, teacher.tokenizer, LONG, max_length=16, overlap=5)
    torch.testing.assert_close(ref.logprobs[ref.mask], got.logprobs[got.mask])
    whole = teacher_byte_logprobs(teacher.model, teacher.tokenizer, LONG, max_length=512)
    assert not torch.allclose(whole.logprobs[whole.mask], got.logprobs[got.mask])  # windows really were used


def test_default_window_and_batch_are_capped_for_cpu(gpt2_folder, mistral_folder):
    small = load_teacher(f"hf:{gpt2_folder}")
    assert small.max_length == 512  # model has 512 positions
    assert small.batch_size == 8  # 512 × 50257 float32 logits = 103 MB per window: the cap of 8 applies
    big = load_teacher(f"hf:{mistral_folder}")
    assert big.max_length == 1024  # model has 4096: capped
    assert big.batch_size == 8  # 1024 × 32768 × 4 B = 134 MB per window
    assert load_teacher(f"hf:{mistral_folder}?max_length=4096").batch_size == 2  # 537 MB per window
    assert load_teacher(f"hf:{mistral_folder}?batch_size=3").batch_size == 3


def test_progress_counts_bytes_and_close_frees(gpt2_folder):
    teacher = load_teacher(f"hf:{gpt2_folder}?batch_size=2")
    seen: list[int] = []
    texts = [TEXT, "a", "bb", LONG, "ccc"]
    teacher.byte_targets(texts, progress=seen.append)
    assert len(seen) == 3 and sum(seen) == sum(len(t.encode()) for t in texts)
    with pytest.raises(TypeError):
        teacher.byte_targets("not a list")
    teacher.to("cpu")
    with teacher:
        pass
    assert teacher.model is None
    with pytest.raises(ConfigError, match="closed"):
        teacher.byte_targets(["x"])


def test_lossy_tokenizer_is_refused(tmp_path, tokenizers):
    folder = save_tiny_teacher(tmp_path / "lossy", lowercasing_tokenizer(tokenizers("gpt2")))
    with pytest.raises(LossyTokenizerError, match="does not reproduce"):
        load_teacher(f"hf:{folder}")


def test_model_and_tokenizer_must_be_a_pair(tokenizers):
    model = tiny_causal_lm(1000)
    with pytest.raises(VocabMismatchError):
        Teacher("mismatch", model, tokenizers("gpt2"))


# ------------------------------------------------------------------------------------------------------------
# Spec strings and options
# ------------------------------------------------------------------------------------------------------------


def test_registered_spec_with_options_and_precedence():
    r = resolve_teacher("smollm2-135m?max_length=512&dtype=bfloat16")
    assert r.name == "smollm2-135m" and r.spec.source == "gguf" and r.spec.vocab_size == 49152
    assert (r.options.max_length, r.options.dtype, r.options.torch_dtype()) == (512, "bfloat16", torch.bfloat16)
    # spec defaults < caller overrides < options written in the string
    r = resolve_teacher("GEMMA3_270M?batch_size=2", {"batch_size": 8, "max_length": 256, "device": None})
    assert r.name == "gemma3-270m" and r.options.batch_size == 2 and r.options.max_length == 256
    assert resolve_teacher("smollm2-135m?cache=false").options.cache is False


@pytest.mark.parametrize("text,match", [
    ("smollm2-135m?max_length=abc", "max_length='abc'"),
    ("smollm2-135m?max_length=4", "max_length='4'.*greater than or equal to 8"),
    ("smollm2-135m?colour=blue", "unknown option.*colour.*valid options"),
    ("smollm2-135m?max_length", "has no value"),
    ("smollm2-135m?dtype=int8", "dtype='int8'"),
    ("smollm2-135m?device=potato", "not a torch device"),
    ("", "empty spec"),
    ("?max_length=3", "options without a teacher"),
    ("hf:", "nothing after 'hf:'"),
    ("hf:./no/such/folder", "neither an existing folder nor a hub id"),
    ("gguf:model.bin", "not a .gguf file"),
])
def test_bad_specs_name_the_problem(text, match):
    with pytest.raises(ConfigError, match=match):
        resolve_teacher(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_fails_before_loading():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_teacher("smollm2-135m?device=cuda")


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as info:
        resolve_teacher("smollm2-13m")
    message = str(info.value)
    assert "smollm2-135m" in message and "hf:PATH_OR_ID" in message and "mergekd.teachers" in message


def test_hub_id_specs_and_offline_error(monkeypatch):
    r = resolve_teacher("hf:Qwen/Qwen2.5-0.5B?revision=main")
    assert r.spec.is_hub_id() and r.options.revision == "main" and r.name == "hf:Qwen/Qwen2.5-0.5B"
    assert registered_spec("qwen2.5-0.5b").location == "Qwen/Qwen2.5-0.5B"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingTeacherError, match="HF_HUB_OFFLINE=1") as info:
        load_teacher("hf:mergekd-tests/no-such-model")
    assert isinstance(info.value, MergekdError)


def test_install_state_of_specs(gpt2_folder, tmp_path):
    assert resolve_teacher(f"hf:{gpt2_folder}").spec.is_installed()
    assert not resolve_teacher("hf:mergekd-tests/no-such-model").spec.is_installed()
    assert not resolve_teacher(f"gguf:{tmp_path / 'missing.gguf'}").spec.is_installed()
    with pytest.raises(MissingTeacherError, match="does not exist"):
        load_teacher(f"gguf:{tmp_path / 'missing.gguf'}")
    assert resolve_teacher(f"hf:{gpt2_folder}").spec.family == "llama"  # read from config.json, not loaded


# ------------------------------------------------------------------------------------------------------------
# Registry plugins (entry-point group mergekd.teachers)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def plugin(monkeypatch, gpt2_folder):
    """A fake installed distribution exposing two entry points: a spec factory and a broken object."""
    module = types.ModuleType("mergekd_fake_plugin")
    module.tiny = lambda: TeacherSpec(name="tiny-plugin", source="hf", location=str(gpt2_folder),
                                      family="llama", vocab_size=50257, params="tiny")
    module.wrong_vocab = TeacherSpec(name="wrong-vocab", source="hf", location=str(gpt2_folder), vocab_size=123)
    module.not_a_spec = 42

    def explodes() -> TeacherSpec:
        raise ImportError("optional dependency missing")

    module.explodes = explodes
    monkeypatch.setitem(sys.modules, "mergekd_fake_plugin", module)
    eps = [metadata.EntryPoint(name=n, value=f"mergekd_fake_plugin:{v}", group="mergekd.teachers")
           for n, v in [("tiny-plugin", "tiny"), ("wrong-vocab", "wrong_vocab"), ("not-a-spec", "not_a_spec"),
                        ("explodes", "explodes")]]
    real = metadata.entry_points

    def fake(**kwargs):
        return eps if kwargs.get("group") == "mergekd.teachers" else real(**kwargs)

    monkeypatch.setattr("mergekd.registry.metadata.entry_points", fake)
    monkeypatch.setattr(TEACHERS, "_items", dict(TEACHERS._items))
    monkeypatch.setattr(TEACHERS, "_entry_points_loaded", False)
    return module


def test_plugin_teacher_loads_through_entry_point(plugin):
    assert "tiny-plugin" in TEACHERS.names()
    teacher = load_teacher("tiny-plugin?max_length=64")
    assert teacher.name == "tiny-plugin" and teacher.max_length == 64
    assert teacher.byte_targets(["plugin text"])[0].num_bytes == len("plugin text")
    with pytest.raises(VocabMismatchError, match="promises 123"):
        load_teacher("wrong-vocab")
    with pytest.raises(ConfigError, match="neither a TeacherSpec"):
        resolve_teacher("not-a-spec")
    with pytest.raises(ConfigError, match="explodes.*ImportError: optional dependency missing"):
        resolve_teacher("explodes")


def test_cli_lists_builtins_and_plugins(plugin):
    from mergekd.cli import app

    result = CliRunner().invoke(app, ["teachers", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "llama-3.2-1b", "tiny-plugin"):
        assert name in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    for name in ("smollm2-135m", "gemma3-270m", "tiny-plugin"):
        expected = "yes" if resolve_teacher(name).spec.is_installed() else "no"
        assert rows[name].rstrip(" │").endswith(expected)
    assert rows["qwen2.5-0.5b"].rstrip(" │").endswith("no") or resolve_teacher("qwen2.5-0.5b").spec.is_installed()
    assert "error" in rows["not-a-spec"] and "neither a TeacherSpec" in result.output  # one bad row, not a crash
    assert "error" in rows["explodes"]


def test_cli_show_and_unknown(gpt2_folder):
    from mergekd.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["teachers", "show", "gemma3-270m"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "262,144" in shown.output and "safetensors cache" in shown.output
    shown = runner.invoke(app, ["teachers", "show", f"hf:{gpt2_folder}"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "llama" in shown.output
    unknown = runner.invoke(app, ["teachers", "show", "gemma3-27b"])
    assert unknown.exit_code != 0 and isinstance(unknown.exception, UnknownNameError)


# ------------------------------------------------------------------------------------------------------------
# GGUF → safetensors cache
# ------------------------------------------------------------------------------------------------------------


def _tiny_builder(tokenizer, calls: list):
    def build(folder: Path) -> None:
        calls.append(folder)
        model = tiny_causal_lm(len(tokenizer), seed=5)
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    return build


def test_cache_is_reused_and_damage_is_rebuilt(tmp_path, tokenizers):
    tok = tokenizers("gpt2")
    target, calls = tmp_path / "teachers" / "tiny-0123456789abcdef", []
    build = _tiny_builder(tok, calls)
    folder, built = gguf_cache.ensure_cache(target, build, {"gguf": "x"})
    assert built and folder == target and gguf_cache.is_complete(target) and len(calls) == 1
    assert calls[0] != target and not calls[0].exists()  # built in a temporary sibling, then renamed
    assert gguf_cache.ensure_cache(target, build, {"gguf": "x"}) == (target, False) and len(calls) == 1
    marker = json.loads((target / gguf_cache.MARKER).read_text())
    assert marker["files"]["model.safetensors"] == (target / "model.safetensors").stat().st_size

    weights = target / "model.safetensors"  # truncated weights (killed copy, full disk)
    weights.write_bytes(weights.read_bytes()[:100])
    assert not gguf_cache.is_complete(target)
    assert gguf_cache.ensure_cache(target, build, {"gguf": "x"})[1] and len(calls) == 2
    assert gguf_cache.is_complete(target)

    (target / gguf_cache.MARKER).write_text("{not json")  # corrupt marker
    assert gguf_cache.ensure_cache(target, build, {"gguf": "x"})[1] and len(calls) == 3
    (target / gguf_cache.MARKER).unlink()  # no marker: never trusted
    assert gguf_cache.ensure_cache(target, build, {"gguf": "x"})[1] and len(calls) == 4
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary leftovers


def test_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "teachers" / "broken-0123456789abcdef"

    def build(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="killed"):
        gguf_cache.ensure_cache(target, build, {})
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_stale_temporaries_are_swept(tmp_path, tokenizers):
    target = tmp_path / "t-0123456789abcdef"
    old, fresh = tmp_path / (target.name + ".tmp-old"), tmp_path / (target.name + ".tmp-fresh")
    old.mkdir()
    fresh.mkdir()
    import os
    import time

    os.utime(old, (time.time() - 2 * gguf_cache.STALE_SECONDS,) * 2)
    gguf_cache.ensure_cache(target, _tiny_builder(tokenizers("gpt2"), []), {})
    assert not old.exists() and fresh.exists()  # a fresh one may be another process's live build


def test_cache_key_follows_the_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF one")
    k1 = gguf_cache.cache_key(f)
    f.write_bytes(b"GGUF two!")
    assert gguf_cache.cache_key(f) != k1
    assert gguf_cache.slug("gguf:/a b/c.gguf") == "gguf-a-b-c.gguf"


def test_plain_copy_drops_quantisation_config(tokenizers):
    from transformers.utils.quantization_config import GgufConfig

    model = tiny_causal_lm(len(tokenizers("gpt2")), seed=6)
    model.config.quantization_config = GgufConfig()
    plain = gguf_cache.plain_copy_of(model)
    assert not hasattr(plain.config, "quantization_config")
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits)


def test_saved_byte_vocab_round_trip_and_checks(tmp_path, tokenizers, gpt2_folder):
    from mergekd.bytes import byte_vocab_for

    tok = tokenizers("mistral-v3")
    vocab = byte_vocab_for(tok, "mistral-v3")
    save_byte_vocab(vocab, tmp_path)
    loaded = load_byte_vocab(tmp_path, tok)
    assert loaded is not None and loaded.token_bytes == vocab.token_bytes
    assert (loaded.scheme, loaded.adds_dummy_prefix, loaded.eos_ids) == (vocab.scheme, vocab.adds_dummy_prefix,
                                                                         vocab.eos_ids)
    assert loaded.fingerprint() == vocab.fingerprint()
    assert load_byte_vocab(tmp_path, tokenizers("gpt2")) is None  # another tokenizer: not used
    data = bytearray((tmp_path / VOCAB_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # damaged in place
    (tmp_path / VOCAB_FILE).write_bytes(bytes(data))
    assert load_byte_vocab(tmp_path, tok) is None


def test_gguf_teacher_builds_cache_then_reloads(tmp_path, isolated_cache, monkeypatch):
    gguf_file = write_tiny_gguf(tmp_path / "gguf" / "tiny.gguf")
    first = load_teacher(f"gguf:{gguf_file}")
    caches = list(isolated_cache.iterdir())
    assert len(caches) == 1 and gguf_cache.is_complete(caches[0])
    assert (caches[0] / VOCAB_FILE).is_file()
    reference = first.byte_targets([TEXT])[0]
    assert math.isfinite(reference.realised_bpb())

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read again although the cache is complete")

    import transformers

    real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained

    def guarded(path, *args, **kwargs):
        if "gguf_file" in kwargs:
            no_gguf()
        return real_from_pretrained(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", guarded)
    second = load_teacher(f"gguf:{gguf_file}")
    again = second.byte_targets([TEXT])[0]
    torch.testing.assert_close(again.logprobs[again.mask], reference.logprobs[reference.mask])
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", real_from_pretrained)

    # damaged in place with the sizes intact: the marker passes, loading fails, the cache is rebuilt once
    weights = caches[0] / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    third = load_teacher(f"gguf:{gguf_file}")
    redo = third.byte_targets([TEXT])[0]
    torch.testing.assert_close(redo.logprobs[redo.mask], reference.logprobs[reference.mask])
    assert gguf_cache.existing_caches(f"gguf:{gguf_file}") == caches


def test_gguf_without_cache_and_folder_loader(tmp_path, isolated_cache, tokenizers):
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3)
    teacher = load_teacher(f"gguf:{gguf_file}?cache=false")
    assert not isolated_cache.exists()
    assert teacher.byte_targets(["the other"])[0].num_bytes == len("the other")
    folder = save_tiny_teacher(tmp_path / "plain", tokenizers("gpt2"))
    model, tok, vocab = load_folder(folder, TeacherOptions())
    assert vocab is None and len(tok) == 50257 and not model.training
