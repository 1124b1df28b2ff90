"""Streamed cache capture: any data source (parquet, jsonl, spec strings), limits, resume at the data position
without recomputing finished shards, edited data refused, and CachedSignal over a streamed cache.

Two tiny random teachers with REAL, different tokenizers (GPT-2, Mistral-v1) saved as ``hf:`` folders; the data
is real text (Botchan) cut into documents, written once as JSON lines (field ``text``) and once as Parquet
(column ``body``): the same documents, so the same chunks.
"""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from teacher_fixtures import save_tiny_teacher

from mergekd.cache import CachedSignal, capture_cache, decode_rows, encode_rows, read_manifest
from mergekd.cache.identity import chunks_sha256
from mergekd.data import load_chunks
from mergekd.errors import ConfigError
from mergekd.teachers import Teacher, load_teacher

SEQ = 64
SHARD = 3
KW = dict(seq_bytes=SEQ, shard_chunks=SHARD, max_length=256, show_progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizers):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mergekd.assets import read_body

    root = tmp_path_factory.mktemp("cache-stream")
    specs = [f"hf:{save_tiny_teacher(root / f't-{name}', tokenizers(name), seed=30 + i, max_positions=256)}"
             for i, name in enumerate(["gpt2", "mistral-v1"])]
    text = read_body("botchan")[3000:4000]
    cuts = [0, 150, 500, 510, 800, len(text)]
    docs = [text[a:b] for a, b in zip(cuts, cuts[1:])] + ["naïve café — 日本語 😀 <|endoftext|> <s>"]
    with open(root / "docs.jsonl", "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": doc}) + "\n")
    pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}), root / "docs.parquet")
    parquet = f"{root / 'docs.parquet'}?text_field=body"
    chunks = load_chunks(root / "docs.jsonl", SEQ)  # the chunks every reader must give
    assert len(chunks) > 4 * SHARD
    teachers = [load_teacher(s, overrides={"device": "cpu", "max_length": 256}) for s in specs]
    reference = root / "reference"  # uninterrupted capture of the JSON lines (the reference for every comparison)
    capture_cache(reference, specs, root / "docs.jsonl", **KW)
    return {"root": root, "specs": specs, "docs": docs, "chunks": chunks, "parquet": parquet, "teachers": teachers,
            "reference": reference}


@pytest.fixture
def pooled(world, monkeypatch):
    """The fixture's teachers behind fresh adapters (no reload) on the one loader every teacher loop uses; the
    teachers still compute. Returns (loaded specs, byte_targets calls as chunk counts)."""
    import mergekd.teachers.adapter as adapter

    by_spec = dict(zip(world["specs"], world["teachers"]))
    loads: list = []
    calls: list = []

    def load(spec, overrides=None):
        loads.append(spec)
        base = by_spec[spec]
        return Teacher(base.name, base.model, base.tokenizer, options=base.options)

    original = Teacher.byte_targets
    monkeypatch.setattr(adapter, "load_teacher", load)
    monkeypatch.setattr(Teacher, "byte_targets",
                        lambda self, texts, progress=None: calls.append(len(texts)) or original(self, texts, progress))
    return loads, calls


def _shard_files(cache):
    return {p.relative_to(cache): p.read_bytes() for p in sorted(cache.rglob("*.safetensors"))}


def _fresh(world, name):
    out = world["root"] / name
    shutil.rmtree(out, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------------------
# any source, same chunks, same rows


def test_parquet_capture_equals_the_jsonl_capture(world, pooled):
    out = _fresh(world, "parquet")
    manifest = capture_cache(out, world["specs"], world["parquet"], **KW)
    reference = read_manifest(world["reference"])
    assert manifest.data.complete and manifest.data.source == world["parquet"]
    assert manifest.data.num_chunks == reference.data.num_chunks == len(world["chunks"])
    assert manifest.data.chunks_sha256 == reference.data.chunks_sha256 == chunks_sha256(world["chunks"])
    assert manifest.data.num_bytes == sum(len(c.encode()) for c in world["chunks"])
    assert _shard_files(out) == _shard_files(world["reference"])  # byte-identical shards
    for k in range(2):
        starts = [s.start for s in manifest.teachers[k].shards]
        assert starts == list(range(0, len(world["chunks"]), SHARD))
        for s in manifest.teachers[k].shards:
            assert s.text_sha256 == chunks_sha256(world["chunks"][s.start:s.stop])
    assert manifest.data.files and manifest.data.files[0][0] == str((world["root"] / "docs.parquet").resolve())


def test_cached_signal_over_a_streamed_cache(world, pooled):
    out = world["root"] / "parquet"
    if not (out / "manifest.json").is_file():
        capture_cache(out, world["specs"], world["parquet"], **KW)
    lines: list = []
    cfg = SimpleNamespace(teachers=world["specs"], data=world["parquet"], seq_bytes=SEQ, mix="linear")
    signal = CachedSignal(out, cfg, progress=lines.append)
    assert signal.num_chunks == len(world["chunks"]) and len(lines) == 1 and "checking" in lines[0]
    idx = [0, SHARD + 1, len(world["chunks"]) - 1]
    texts = [world["chunks"][i] for i in idx]
    cached = signal.per_teacher(texts, idx)
    manifest = signal.manifest
    for k, teacher in enumerate(world["teachers"]):
        for i, dense, got in zip(idx, teacher.byte_targets(texts), cached[k]):
            enc = encode_rows(dense.logprobs, dense.mask, manifest.top_k, manifest.tail)
            want, _ = decode_rows(enc.count, enc.tail, enc.entry_byte, enc.entry_code,
                                  signal.store.shard(k, i).background)
            assert torch.equal(got.mask, dense.mask)
            assert torch.equal(torch.nan_to_num(got.logprobs, nan=7.0), torch.nan_to_num(want, nan=7.0))
    # the reading options are part of the identity: the jsonl (field "text") is refused by name, in one line
    other = SimpleNamespace(teachers=[], data=str(world["root"] / "docs.jsonl"), seq_bytes=SEQ, mix="linear")
    with pytest.raises(ConfigError, match="data source mismatch.*text_field=body.*text_field=text") as err:
        CachedSignal(out, other)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="limit_chunks mismatch"):
        CachedSignal(out, SimpleNamespace(**{**vars(cfg), "limit_chunks": 3}))


# ------------------------------------------------------------------------------------------------------------
# limits


def test_limits_cover_exactly_the_first_chunks(world, pooled):
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks, spec = world["chunks"], world["specs"][:1]
    sizes = [len(c.encode()) for c in chunks]
    # a row after the limits that the reader refuses when it reaches it: a limited capture never does
    broken = world["root"] / "broken.parquet"
    pq.write_table(pa.table({"body": world["docs"] + [None]}), broken)
    source = f"{broken}?text_field=body"
    with pytest.raises(ConfigError, match="missing field 'body'"):
        capture_cache(_fresh(world, "broken-all"), spec, source, **KW)

    cases = [({"limit_chunks": 5}, 5),
             ({"limit_bytes": sum(sizes[:3])}, 3),  # the limit reached exactly at a chunk's end: that chunk is last
             ({"limit_bytes": sum(sizes[:6]) + 1}, 7),  # the chunk that crosses the limit is included
             ({"limit_bytes": sum(sizes[:6]) + 1, "limit_chunks": 2}, 2),  # whichever comes first
             ({"limit_chunks": 10 * len(chunks)}, len(chunks))]  # a limit past the end: everything
    for i, (limits, expect) in enumerate(cases):
        out = _fresh(world, f"limit-{i}")
        src = source if expect < len(chunks) else world["parquet"]
        manifest = capture_cache(out, spec, src, **limits, **KW)
        data = manifest.data
        assert (data.num_chunks, data.chunks_sha256, data.num_bytes) == (expect, chunks_sha256(chunks[:expect]),
                                                                         sum(sizes[:expect])), limits
        assert (data.limit_bytes, data.limit_chunks) == (limits.get("limit_bytes"), limits.get("limit_chunks"))
        if "limit_bytes" in limits and "limit_chunks" not in limits:
            assert chunks[:expect] == load_chunks(world["root"] / "docs.jsonl", SEQ, limit_bytes=limits["limit_bytes"])
        full = [s.file for s in read_manifest(world["reference"]).teachers[0].shards if s.stop <= expect]
        assert all((out / f).read_bytes() == (world["reference"] / f).read_bytes() for f in full)  # as captured whole
        # the cache is valid for data that goes on after what it covers
        cfg = SimpleNamespace(teachers=spec, data=source, seq_bytes=SEQ, mix="linear")
        assert CachedSignal(out, cfg).num_chunks == expect
    # a rerun with other limits is refused, naming both
    with pytest.raises(ConfigError, match="limit_chunks mismatch.*limit_chunks=5.*limit_chunks=6"):
        capture_cache(world["root"] / "limit-0", spec, source, limit_chunks=6, **KW)
    with pytest.raises(ConfigError, match="limit_bytes mismatch.*no limit"):
        capture_cache(world["root"] / "limit-1", spec, source, **KW)
    with pytest.raises(ConfigError, match="limit_chunks=0 must be at least 1"):
        capture_cache(_fresh(world, "limit-zero"), spec, source, limit_chunks=0, **KW)


# ------------------------------------------------------------------------------------------------------------
# resume at the data position


def test_interrupted_streamed_capture_resumes_without_recomputing(world, pooled):
    loads, calls = pooled
    out = _fresh(world, "resume")
    n = len(world["chunks"])

    def stop_at(teacher, start):
        def hook(t, s, e):
            if (t, s) == (teacher, start):
                raise KeyboardInterrupt
        return hook

    with pytest.raises(KeyboardInterrupt):
        capture_cache(out, world["specs"], world["parquet"], on_shard=stop_at(0, 2 * SHARD), **KW)
    manifest = read_manifest(out)
    assert not manifest.data.complete and manifest.data.num_chunks is None
    assert [s.start for s in manifest.teachers[0].shards] == [0, SHARD, 2 * SHARD]
    with pytest.raises(ConfigError, match="incomplete.*first pass"):
        CachedSignal(out, SimpleNamespace(teachers=[], data=world["parquet"], seq_bytes=SEQ, mix="linear"))
    finished = {s.file: (out / s.file).stat().st_mtime_ns for s in manifest.teachers[0].shards}
    assert calls == [SHARD] * 3 and loads == world["specs"][:1]

    # resume: teacher 0 from chunk 3·SHARD on, then teacher 1; stopped again inside teacher 1
    calls.clear(), loads.clear()
    with pytest.raises(KeyboardInterrupt):
        capture_cache(out, world["specs"], world["parquet"], on_shard=stop_at(1, SHARD), **KW)
    assert sum(calls[:-2]) == n - 3 * SHARD and calls[-2:] == [SHARD, SHARD] and loads == world["specs"]
    assert {f: (out / f).stat().st_mtime_ns for f in finished} == finished  # never rewritten
    manifest = read_manifest(out)
    assert manifest.data.complete and manifest.data.num_chunks == n

    # resume: teacher 0 (all finished) is not loaded; teacher 1 computes only its missing chunks
    calls.clear(), loads.clear()
    capture_cache(out, world["specs"], world["parquet"], **KW)
    assert sum(calls) == n - 2 * SHARD and loads == world["specs"][1:]
    assert _shard_files(out) == _shard_files(world["reference"])  # = an uninterrupted capture
    assert not list(out.rglob("*.tmp"))

    calls.clear(), loads.clear()
    capture_cache(out, world["specs"], world["parquet"], **KW)
    assert calls == [] and loads == []
    # a touched file (same text): a rerun re-reads it to check the chunks, records the new mtime, computes nothing
    parquet = world["root"] / "docs.parquet"
    os.utime(parquet, ns=(parquet.stat().st_atime_ns, parquet.stat().st_mtime_ns + 10**9))
    manifest = capture_cache(out, world["specs"], world["parquet"], **KW)
    assert calls == [] and loads == [] and manifest.data.files[0][2] == parquet.stat().st_mtime_ns
    assert read_manifest(out).data.files == manifest.data.files


def test_edited_data_is_refused_on_resume_and_on_reading(world, pooled):
    loads, calls = pooled
    data = world["root"] / "edited.jsonl"

    def write(docs):
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")

    write(world["docs"])
    out, specs = _fresh(world, "edited"), world["specs"][:1]

    def stop(t, s, e):
        if s == SHARD:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture_cache(out, specs, data, on_shard=stop, **KW)
    before = _shard_files(out), (out / "manifest.json").read_bytes()
    write(["X" + world["docs"][0][1:]] + world["docs"][1:])  # inside the first shard's chunks
    loads.clear(), calls.clear()
    with pytest.raises(ConfigError) as err:
        capture_cache(out, specs, data, **KW)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data changed: chunks [0, {SHARD})") and str(data) in message
    assert "new --out" in message
    assert loads == [] and calls == []  # refused before any teacher was loaded
    assert (_shard_files(out), (out / "manifest.json").read_bytes()) == before

    # a finished cache whose data is edited afterwards: refused by the reader and by a capture rerun
    write(world["docs"])
    capture_cache(out, specs, data, **KW)
    write(world["docs"][:-1] + [world["docs"][-1].replace("endoftext", "endofTEXT")])  # the last shard's chunks
    last = read_manifest(out).shard_ranges()[-1]
    cfg = SimpleNamespace(teachers=specs, data=data, seq_bytes=SEQ, mix="linear")
    with pytest.raises(ConfigError, match=rf"data mismatch: chunks \[{last[0]}, {last[1]}\)"):
        CachedSignal(out, cfg)
    loads.clear()
    with pytest.raises(ConfigError, match="data mismatch"):
        capture_cache(out, specs, data, **KW)
    assert loads == []


def test_manifest_of_an_older_mergekd_is_refused(world, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(world["reference"], old)
    raw = json.loads((old / "manifest.json").read_text())
    raw["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="captured by an older mergekd.*re-capture"):
        read_manifest(old)


def test_cache_command_takes_a_spec_and_limits(world, tmp_path, pooled):
    import typer
    from typer.testing import CliRunner

    from mergekd.commands.cache_cmd import cache_command

    app = typer.Typer()
    app.command("cache")(cache_command)
    app.command("other")(lambda: None)
    out = tmp_path / "cli-cache"
    args = ["cache", "--teachers", world["specs"][0], "--data", world["parquet"], "--out", str(out), "--seq-bytes",
            str(SEQ), "--shard-chunks", str(SHARD), "--max-length", "256", "--limit-chunks", "6", "--quiet", "--json",
            str(tmp_path / "summary.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["chunks"] == 6 and summary["text_bytes"] == sum(len(c.encode()) for c in world["chunks"][:6])
    verify = args[:args.index("--limit-chunks")] + ["--verify", "--sample", "2", "--quiet", "--json",
                                                    str(tmp_path / "verify.json")]
    result = CliRunner().invoke(app, verify)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["checksums"] == "ok" and all(i < 6 for i in report["sample_chunks"])
    assert report["teachers"][0]["mask_mismatch"] == 0


def test_cache_command_refuses_other_limits_in_one_line(world, tmp_path, pooled):
    """As a user would: a rerun into a finished cache with another limit exits 2 with one line; a source with a
    wrong field too, before any folder is made; no file changes."""
    from test_bad_input import assert_refused, run_cli, snapshot

    out = tmp_path / "cache"
    capture_cache(out, world["specs"][:1], world["parquet"], limit_chunks=5, **KW)
    before = snapshot(tmp_path)
    result = run_cli("cache", "--teachers", world["specs"][0], "--data", world["parquet"], "--out", out,
                     "--seq-bytes", SEQ, "--shard-chunks", SHARD, "--max-length", 256, "--limit-chunks", 7,
                     cwd=tmp_path)
    assert_refused(result, "limit_chunks mismatch", "limit_chunks=5", "limit_chunks=7")
    assert snapshot(tmp_path) == before
    bad_field = f"{world['root'] / 'docs.parquet'}?text_field=nope"
    result = run_cli("cache", "--teachers", world["specs"][0], "--data", bad_field, "--out", tmp_path / "new",
                     "--seq-bytes", SEQ, cwd=tmp_path)
    assert_refused(result, "docs.parquet", "no field 'nope'", "text_field")
    assert not (tmp_path / "new").exists() and snapshot(tmp_path) == before
