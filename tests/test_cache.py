"""Teacher byte cache: codec bound, capture → CachedSignal round trip, resume, mismatch refusals, corruption.

Two tiny random teachers with REAL, different tokenizers (GPT-2 byte-level BPE, Mistral-v1 SentencePiece) are
saved as ``hf:`` folders; one is sharp and one is broad, so rows both stop early and hit ``top_k``.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import tiny_causal_lm

from mergekd.cache import (LOGPROB_BOUND, CachedSignal, CorruptShardError, capture_cache, check_checksums,
                           decode_rows, encode_rows, kl_per_row, read_manifest, verify_cache)
from mergekd.cache.codec import background_from
from mergekd.errors import ConfigError
from mergekd.teachers import Teacher, load_teacher

SEQ = 64
SHARD = 2
NEG_INF = float("-inf")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizers):
    """Teacher folders, a data file of 6 chunks, one finished cache (3 shards per teacher), the teachers online
    and their dense targets of every chunk."""
    from mergekd.assets import read_text

    root = tmp_path_factory.mktemp("cache")
    specs = []
    for i, (name, scale) in enumerate([("gpt2", 2.0), ("mistral-v1", 0.4)]):
        tok = tokenizers(name)
        folder = root / f"teacher-{name}"
        model = tiny_causal_lm(len(tok), seed=20 + i, logit_scale=scale)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        specs.append(f"hf:{folder}")
    text = read_text("botchan")
    data = root / "train.txt"
    data.write_text(text[1000:1310] + "\nnaïve café — 日本語 😀 <|endoftext|> <s>\n")
    other = root / "other.txt"
    other.write_text(text[5000:5360])
    cache = root / "cache"
    capture_cache(cache, specs, data, seq_bytes=SEQ, shard_chunks=SHARD, max_length=256, show_progress=False)
    # the same teachers online, and their dense targets for every chunk (the reference for every comparison)
    from mergekd.data import load_chunks

    teachers = [load_teacher(s, overrides={"device": "cpu", "max_length": 256}) for s in specs]
    dense = [t.byte_targets(load_chunks(data, SEQ)) for t in teachers]
    return {"root": root, "specs": specs, "data": data, "other": other, "cache": cache, "teachers": teachers,
            "dense": dense}


def _cfg(world, **kw):
    from mergekd.distill.config import DistillConfig

    fields = dict(teachers=world["specs"], student="new:llama?tokenizer=gpt2", data=world["data"], out=world["root"] / "run",
                  seq_bytes=SEQ, mix="linear")
    fields.update(kw)
    return DistillConfig(**fields)


def _chunks(world):
    from mergekd.data import load_chunks

    return load_chunks(world["data"], SEQ)


def _pooled_loader(world, log: list | None = None):
    """A stand-in for ``load_teacher`` that wraps the fixture's teachers in fresh adapters (no reload, no second
    trie build). ``close()`` drops only the wrapper's reference, like a real teacher; the real loading path is
    exercised once, by the fixture's capture."""
    by_spec = dict(zip(world["specs"], world["teachers"]))

    def load(spec, overrides=None):
        if log is not None:
            log.append(spec)
        base = by_spec[spec]
        return Teacher(base.name, base.model, base.tokenizer, options=base.options)

    return load


def _count_byte_targets(monkeypatch) -> list:
    calls: list = []
    original = Teacher.byte_targets
    monkeypatch.setattr(Teacher, "byte_targets",
                        lambda self, texts, progress=None: calls.append(len(texts)) or original(self, texts, progress))
    return calls


def _copy(world, name):
    dst = world["root"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(world["cache"], dst)
    return dst


# ------------------------------------------------------------------------------------------------------------
# codec


def _synthetic_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Peaked, broad and sparse rows (some bytes impossible) plus undefined rows, in the byte core's layout."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(600, 256, generator=g, dtype=torch.float64)
    logits *= torch.tensor([0.3, 1.0, 3.0, 8.0], dtype=torch.float64).repeat(150).unsqueeze(1)
    logits[::5, 100:] = NEG_INF  # rows where most bytes are impossible (inside a token)
    logits[7, 1:] = NEG_INF  # a deterministic row
    lp = torch.cat([torch.log_softmax(logits, -1), torch.full((600, 1), NEG_INF, dtype=torch.float64)], 1).float()
    mask = torch.ones(600, dtype=torch.bool)
    mask[[0, 13, 599]] = False
    lp[~mask] = float("nan")
    return lp, mask


@pytest.mark.parametrize("top_k,tail", [(16, 1e-3), (4, 1e-2), (1, 0.0), (255, 1e-4)])
def test_codec_round_trip_within_documented_bound(top_k, tail):
    lp, mask = _synthetic_rows()
    enc = encode_rows(lp, mask, top_k, tail)
    dec, dmask = decode_rows(enc.count, enc.tail, enc.entry_byte, enc.entry_code, background_from(enc.tail_mass))
    assert torch.equal(dmask, mask)
    assert torch.isnan(dec[~mask]).all()
    assert (dec[mask, 256] == NEG_INF).all()
    assert torch.allclose(torch.logsumexp(dec[mask].double(), -1), torch.zeros(int(mask.sum()), dtype=torch.float64),
                          atol=1e-5)
    n = enc.count.long()
    assert ((n > 0) == mask).all() and int(n.max()) <= top_k
    # stored bytes: within LOGPROB_BOUND of the dense log-prob
    row_of = torch.repeat_interleave(torch.arange(len(n)), n)
    col = enc.entry_byte.long()
    dense, cached = lp[row_of, col].double(), dec[row_of, col].double()
    assert torch.isfinite(dense).all(), "an impossible byte was stored"
    ok = dense > -15.8
    assert float((cached - dense)[ok].abs().max()) <= LOGPROB_BOUND + 1e-4
    # the tail: total mass within the same bound; rows that stop before top_k leave at most `tail`
    stored = torch.zeros(len(n), 256, dtype=torch.bool)
    stored[row_of, col] = True
    dense_tail = torch.where(stored, 0.0, lp[:, :256].double().exp()).sum(-1)[mask]
    cached_tail = torch.where(stored, 0.0, dec[:, :256].double().exp()).sum(-1)[mask]
    big = dense_tail > 1e-6
    assert float((cached_tail[big].log() - dense_tail[big].log()).abs().max()) <= LOGPROB_BOUND + 1e-4
    early = n[mask] < top_k
    if top_k > 1:
        assert early.any() and float(dense_tail[early].max()) <= tail + 1e-6
    kl = kl_per_row(lp, dec, mask)
    assert torch.isfinite(kl).all() and float(kl.min()) >= -1e-6


def test_codec_is_tight_on_peaked_rows():
    """A row whose top byte holds all but 1e-5 of the mass costs one entry at tail 1e-3 (variable length)."""
    lp = torch.full((1, 257), NEG_INF)
    lp[0, :256] = math.log(1e-5 / 255)
    lp[0, 65] = math.log(1 - 1e-5)
    enc = encode_rows(lp, torch.ones(1, dtype=torch.bool), 16, 1e-3)
    assert enc.count.tolist() == [1] and enc.entry_byte.tolist() == [65]


def test_codec_refuses_end_of_text_mass_inside_text():
    from mergekd.cache import CacheFormatError

    lp = torch.log_softmax(torch.randn(3, 257), -1)
    with pytest.raises(CacheFormatError, match="end-of-text"):
        encode_rows(lp, torch.ones(3, dtype=torch.bool), 16, 1e-3)


# ------------------------------------------------------------------------------------------------------------
# capture → read


def test_cache_rows_are_exactly_the_encoded_dense_targets(world):
    """Each teacher's cached rows equal decode(encode(dense)) exactly, masks identical, KL small."""
    chunks = _chunks(world)
    signal = CachedSignal(world["cache"], _cfg(world))
    assert signal.names == [read_manifest(world["cache"]).teachers[k].label for k in range(2)]
    manifest = read_manifest(world["cache"])
    idx = list(range(len(chunks)))
    cached = signal.per_teacher(chunks, idx)
    for k in range(2):
        kls = []
        for i, d, c in zip(idx, world["dense"][k], cached[k]):
            assert torch.equal(c.mask, d.mask)
            assert c.text_bytes == chunks[i].encode("utf-8")
            shard = signal.store.shard(k, i)
            enc = encode_rows(d.logprobs, d.mask, manifest.top_k, manifest.tail)
            expect, _ = decode_rows(enc.count, enc.tail, enc.entry_byte, enc.entry_code, shard.background)
            assert torch.equal(torch.nan_to_num(c.logprobs, nan=7.0), torch.nan_to_num(expect, nan=7.0))
            kls.append(kl_per_row(d.logprobs, c.logprobs, d.mask))
        kl = torch.cat(kls)
        assert torch.isfinite(kl).all() and float(kl.min()) >= -1e-6
        if k == 0:  # the sharp teacher, like real ones on English text (broad random rows lose more to the tail)
            assert float(kl.mean()) < 0.01


def test_summary_counts_stored_bytes(world):
    summary = read_manifest(world["cache"]).summary()
    files = sum(p.stat().st_size for p in world["cache"].rglob("*.safetensors"))
    assert summary["bytes"] == files
    text = sum(len(c.encode("utf-8")) for c in _chunks(world))
    assert summary["text_bytes"] == text
    assert summary["bytes_per_text_byte"] == pytest.approx(files / text, abs=1e-3)
    manifest = read_manifest(world["cache"])
    for k, t in enumerate(summary["teachers"]):
        own = sum(p.stat().st_size for p in (world["cache"] / manifest.teachers[k].dir).iterdir())
        assert t["bytes"] == own and t["bytes_per_text_byte"] == pytest.approx(own / text, abs=1e-3)
    sharp, broad = summary["teachers"]  # variable-length rows: the sharp teacher stores fewer entries
    assert 1 <= sharp["entries_per_row"] < broad["entries_per_row"] <= manifest.top_k


def test_cached_signal_matches_online_teacher_signal(world):
    pytest.importorskip("mergekd.mix")
    from mergekd.distill.signal import TeacherSignal
    from mergekd.mix import build_mixer

    chunks = _chunks(world)
    idx = [1, 3, 5]
    texts = [chunks[i] for i in idx]
    online = TeacherSignal(world["teachers"], build_mixer("linear"), torch.device("cpu"))
    on_lp, on_mask = online(texts, idx)
    dense = [[world["dense"][k][i] for i in idx] for k in range(2)]  # what online.per_teacher gives (deterministic)
    cached = CachedSignal(world["cache"], _cfg(world))
    ca_lp, ca_mask = cached(texts, idx)
    assert torch.equal(on_mask, ca_mask)
    # KL is jointly convex: KL(Σ w p_k ‖ Σ w q_k) ≤ Σ w KL(p_k ‖ q_k), with equal weights over present teachers
    kl_mix = kl_per_row(on_lp, ca_lp, on_mask)
    per_k = [kl_per_row(torch.cat([d.logprobs for d in dense[k]]), torch.cat([c.logprobs for c in cached_k]),
                        torch.ones(len(on_mask), dtype=torch.bool))
             for k, cached_k in enumerate(cached.per_teacher(texts, idx))]
    masks = torch.stack([torch.cat([d.mask for d in dense[k]]) for k in range(2)])[:, on_mask]
    per_k = torch.stack([torch.where(masks[k], per_k[k][on_mask], 0.0) for k in range(2)])
    bound = (per_k * masks).sum(0) / masks.sum(0)
    assert (kl_mix <= bound + 1e-5).all()
    assert float(kl_mix.mean()) < 0.05


def test_signal_requires_chunk_indices_and_matching_texts(world):
    chunks = _chunks(world)
    signal = CachedSignal(world["cache"], _cfg(world))
    with pytest.raises(ConfigError, match="chunk index"):
        signal.per_teacher([chunks[0]])
    with pytest.raises(ConfigError, match="not the cache's"):
        signal.per_teacher([chunks[0] + "x"], [0])
    with pytest.raises(ConfigError, match="outside"):
        signal.per_teacher([chunks[0]], [len(chunks)])


def test_empty_teacher_list_uses_the_cache_teachers(world):
    signal = CachedSignal(world["cache"], _cfg(world, teachers=[]))
    assert len(signal.names) == 2


# ------------------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("change,message", [
    ({"data": "other"}, "data mismatch"),
    ({"seq_bytes": SEQ * 2}, "seq_bytes mismatch"),
    ({"teachers": "reversed"}, "teacher order mismatch"),
    ({"teachers": "one"}, "teachers mismatch"),
])
def test_cache_that_does_not_match_the_run_is_refused(world, change, message):
    kw = dict(change)
    if kw.get("data") == "other":
        kw["data"] = world["other"]
    if kw.get("teachers") == "reversed":
        kw["teachers"] = world["specs"][::-1]
    elif kw.get("teachers") == "one":
        kw["teachers"] = world["specs"][:1]
    with pytest.raises(ConfigError, match=message):
        CachedSignal(world["cache"], _cfg(world, **kw))


def test_other_conversion_rule_and_incomplete_cache_are_refused(world):
    cache = _copy(world, "rule")
    raw = json.loads((cache / "manifest.json").read_text())
    raw["conversion"]["version"] = 999
    (cache / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="conversion rule mismatch"):
        CachedSignal(cache, _cfg(world))
    cache = _copy(world, "incomplete")
    raw = json.loads((cache / "manifest.json").read_text())
    raw["teachers"][1]["shards"].pop()
    (cache / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="incomplete.*mergekd cache"):
        CachedSignal(cache, _cfg(world))


def test_capture_into_a_cache_of_other_options_is_refused(world):
    cache = _copy(world, "options")
    with pytest.raises(ConfigError, match="top_k mismatch"):
        capture_cache(cache, world["specs"], world["data"], top_k=8, seq_bytes=SEQ, shard_chunks=SHARD,
                      max_length=256, show_progress=False)
    with pytest.raises(ConfigError, match="data mismatch"):
        capture_cache(cache, world["specs"], world["other"], seq_bytes=SEQ, shard_chunks=SHARD, max_length=256,
                      show_progress=False)


def test_corrupt_shard_is_detected_never_used_and_rebuilt(world, monkeypatch):
    import mergekd.teachers.adapter as capture_mod  # the one loader every teacher loop goes through

    cache = _copy(world, "corrupt")
    manifest = read_manifest(cache)
    victim = cache / manifest.teachers[1].shards[1].file  # chunks 2..3 of the second teacher
    blob = bytearray(victim.read_bytes())
    blob[-5] ^= 0x01  # one bit, deep in the tensor data: the file still parses
    victim.write_bytes(bytes(blob))
    chunks = _chunks(world)
    signal = CachedSignal(cache, _cfg(world))
    signal([chunks[0]], [0])  # other shards are fine
    with pytest.raises(CorruptShardError) as err:
        signal([chunks[3]], [3])
    assert str(victim) in str(err.value) and "mergekd cache" in str(err.value)
    with pytest.raises(CorruptShardError, match="shard-00001"):
        check_checksums(cache)
    # a resumed capture rebuilds exactly that shard and nothing else
    monkeypatch.setattr(capture_mod, "load_teacher", _pooled_loader(world))
    calls = _count_byte_targets(monkeypatch)
    capture_cache(cache, world["specs"], world["data"], seq_bytes=SEQ, shard_chunks=SHARD, max_length=256,
                  show_progress=False)
    assert calls == [SHARD]
    assert victim.read_bytes() == (world["cache"] / victim.relative_to(cache)).read_bytes()
    CachedSignal(cache, _cfg(world))([chunks[3]], [3])


def test_missing_shard_file_is_reported(world):
    cache = _copy(world, "missing")
    manifest = read_manifest(cache)
    (cache / manifest.teachers[0].shards[2].file).unlink()
    signal = CachedSignal(cache, _cfg(world))
    with pytest.raises(CorruptShardError, match="missing"):
        signal.per_teacher([_chunks(world)[4]], [4])


# ------------------------------------------------------------------------------------------------------------
# resume


def test_interrupted_capture_resumes_without_recomputing_finished_shards(world, monkeypatch):
    import mergekd.teachers.adapter as capture_mod  # the one loader every teacher loop goes through

    out = world["root"] / "resume"
    shutil.rmtree(out, ignore_errors=True)
    kw = dict(seq_bytes=SEQ, shard_chunks=SHARD, max_length=256, show_progress=False)

    def stop_after_two(teacher, start, stop):
        if (teacher, start) == (0, SHARD):
            raise KeyboardInterrupt

    loads: list = []
    monkeypatch.setattr(capture_mod, "load_teacher", _pooled_loader(world, loads))
    with pytest.raises(KeyboardInterrupt):
        capture_cache(out, world["specs"], world["data"], on_shard=stop_after_two, **kw)
    manifest = read_manifest(out)
    assert [s.start for s in manifest.teachers[0].shards] == [0, SHARD] and not manifest.teachers[1].shards
    finished = {f: (out / f).stat().st_mtime_ns for f in (s.file for s in manifest.teachers[0].shards)}
    assert not list(out.rglob("*.tmp"))

    calls = _count_byte_targets(monkeypatch)
    loads.clear()
    capture_cache(out, world["specs"], world["data"], **kw)
    num_chunks = read_manifest(out).data.num_chunks
    assert sum(calls) == (num_chunks - 2 * SHARD) + num_chunks  # teacher 0: the rest; teacher 1: everything
    assert loads == world["specs"]
    assert {f: (out / f).stat().st_mtime_ns for f in finished} == finished
    for a, b in zip(sorted(out.rglob("*.safetensors")), sorted(world["cache"].rglob("*.safetensors"))):
        assert a.read_bytes() == b.read_bytes()  # same bytes as the uninterrupted capture

    calls.clear(), loads.clear()
    capture_cache(out, world["specs"], world["data"], **kw)
    assert calls == [] and loads == []  # finished teachers are not even loaded


# ------------------------------------------------------------------------------------------------------------
# verify and the command


def test_cache_command_verify_reports_kl(world, tmp_path, monkeypatch):
    import typer

    import mergekd.teachers.adapter as verify_mod  # the one loader every teacher loop goes through
    from typer.testing import CliRunner

    from mergekd.commands.cache_cmd import cache_command

    app = typer.Typer()
    app.command("cache")(cache_command)
    app.command("other")(lambda: None)  # two commands: typer keeps "cache" as a subcommand
    report_path = tmp_path / "report.json"
    args = ["cache", "--teachers", ",".join(world["specs"]), "--data", str(world["data"]), "--out",
            str(world["cache"]), "--seq-bytes", str(SEQ), "--shard-chunks", str(SHARD), "--max-length", "256",
            "--quiet"]
    result = CliRunner().invoke(app, args + ["--json", str(tmp_path / "summary.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["bytes_per_text_byte"] == read_manifest(world["cache"]).summary()["bytes_per_text_byte"]
    monkeypatch.setattr(verify_mod, "load_teacher", _pooled_loader(world))
    result = CliRunner().invoke(app, args + ["--verify", "--sample", "2", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["checksums"] == "ok" and len(report["sample_chunks"]) == 2
    signal = CachedSignal(world["cache"])
    picked = report["sample_chunks"]
    for k, t in enumerate(report["teachers"]):
        assert t["mask_mismatch"] == 0 and t["rows"] > 0
        cached = signal.per_teacher([_chunks(world)[i] for i in picked], picked)[k]
        dense = [world["dense"][k][i] for i in picked]
        kl = torch.cat([kl_per_row(d.logprobs, c.logprobs, d.mask) for d, c in zip(dense, cached)])
        assert t["rows"] == kl.numel()
        assert t["mean_kl"] == pytest.approx(float(kl.mean()), rel=1e-6)
        assert t["max_kl"] == pytest.approx(float(kl.max()), rel=1e-6)
    assert report["mean_kl"] == max(t["mean_kl"] for t in report["teachers"])


def test_verify_refuses_a_corrupt_cache(world):
    cache = _copy(world, "verify-corrupt")
    victim = cache / read_manifest(cache).teachers[0].shards[0].file
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(CorruptShardError, match="shard-00000"):
        verify_cache(cache, world["specs"], world["data"], seq_bytes=SEQ, sample=1)


def test_distill_from_the_cache_loads_no_teacher(world, monkeypatch):
    """`mergekd distill --cache` end to end (2 tiny steps): the KL term is trained and no teacher is loaded."""
    import mergekd.teachers as teachers_mod
    from mergekd.distill import distill

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher was loaded during a cached run")

    monkeypatch.setattr(teachers_mod, "load_teacher", refuse)
    cfg = _cfg(world, teachers=[], cache=world["cache"], out=world["root"] / "distilled", steps=2, batch_size=2,
               student="new:llama?tokenizer=mistral-v3&layers=1&hidden=32&heads=2&ctx=256", warmup_steps=1,
               device="cpu", save_every=2, recipe="bld")  # the byte head's KL term
    final = distill(cfg, show_progress=False)
    assert (final / "config.json").is_file()
    metrics = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["kl"]) and m["kl"] > 0 for m in metrics)
