"""The training stream (mergekd.distill.stream): the order rule, epochs, seek/skip, sources read alike, and the
.jsonl pair/chat detection that keeps ``--data pairs.jsonl`` working without options."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mergekd.distill.stream import DataPosition, ExampleStream, training_source
from mergekd.errors import ConfigError
from mergekd.sources import epoch_seed
from mergekd.text import chunk_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mergekd.assets import read_body

    root = tmp_path_factory.mktemp("stream")
    lines = read_body("botchan")[:12000].split("\n")
    docs = ["\n".join(lines[i:i + 6]) for i in range(0, len(lines), 6)]
    docs = [d for d in docs if d.strip()]
    assert len(docs) > 20
    with (root / "docs.jsonl").open("w") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d}) + "\n")
    pq.write_table(pa.table({"text": docs[:10]}), root / "a.parquet")
    pq.write_table(pa.table({"text": docs[10:]}), root / "b.parquet")
    return root, docs


def _reference_epoch(docs, seq_bytes, buffer, seed, epoch):
    """Independent statement of the documented rule: chunk every document, drop blank chunks, then the buffer."""
    chunks = [c for d in docs for c in chunk_text(d, seq_bytes) if c.strip()]
    rng, slots, out = random.Random(epoch_seed(seed, epoch)), [], []
    for c in chunks:
        if len(slots) < buffer:
            slots.append(c)
            continue
        j = rng.randrange(buffer)
        out.append(slots[j])
        slots[j] = c
    rng.shuffle(slots)
    return out + slots, len(chunks)


def test_steps_follow_the_documented_rule_across_epochs(corpus):
    root, docs = corpus
    stream = ExampleStream(f"{root}/*.parquet?shuffle_buffer=16", seq_bytes=300, prompt_bytes=32, seed=3)
    e0, n = _reference_epoch(docs, 300, 16, 3, 0)
    e1, _ = _reference_epoch(docs, 300, 16, 3, 1)
    got = [e.text for _, e in stream.take(n + 7)]
    assert got == e0 + e1[:7]
    assert stream.position == DataPosition(1, 7)
    assert got[:n] != e1  # epochs are permuted differently


def test_seek_and_skip_resume_the_same_stream(corpus):
    root, _ = corpus
    spec = f"{root}/docs.jsonl?shuffle_buffer=8"
    full = ExampleStream(spec, seq_bytes=256, prompt_bytes=32, seed=1)
    first = full.take(50)
    pos = full.position
    rest = full.take(40)
    sought = ExampleStream(spec, seq_bytes=256, prompt_bytes=32, seed=1)
    sought.seek(pos)
    assert [e for _, e in sought.take(40)] == [e for _, e in rest]
    skipped = ExampleStream(spec, seq_bytes=256, prompt_bytes=32, seed=1)
    skipped.skip(len(first))
    assert skipped.take(40) == rest


def test_parquet_jsonl_and_indices_agree(corpus):
    root, _ = corpus
    a = ExampleStream(f"{root}/*.parquet?shuffle_buffer=0", seq_bytes=200, prompt_bytes=16, seed=0)
    b = ExampleStream(f"{root}/docs.jsonl?shuffle_buffer=0", seq_bytes=200, prompt_bytes=16, seed=0)
    xa, xb = a.take(30), b.take(30)
    assert xa == xb and [i for i, _ in xa] == list(range(30))
    shuffled = ExampleStream(f"{root}/docs.jsonl?shuffle_buffer=64", seq_bytes=200, prompt_bytes=16, seed=0)
    by_index = dict(ExampleStream(str(root / "docs.jsonl"), seq_bytes=200, prompt_bytes=16, seed=0).first(10**6))
    for index, example in shuffled.take(60):  # the carried index is the unshuffled position (cache lookups)
        assert by_index[index] == example


def test_limit_keeps_the_first_chunks(corpus):
    root, _ = corpus
    stream = ExampleStream(str(root / "docs.jsonl"), seq_bytes=200, prompt_bytes=16, seed=5, limit=6)
    got = stream.take(13)
    assert sorted({i for i, _ in got}) == list(range(6)) and stream.position == DataPosition(2, 1)


def test_an_empty_parquet_shard_is_skipped(corpus, tmp_path):
    root, docs = corpus
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "b.parquet")
    got = ExampleStream(f"{tmp_path}/*.parquet?shuffle_buffer=0", seq_bytes=200, prompt_bytes=16, seed=0).first(99)
    assert got == ExampleStream(f"{root}/docs.jsonl?shuffle_buffer=0", seq_bytes=200, prompt_bytes=16,
                                seed=0).first(99)


def test_default_buffer_and_jsonl_kinds(tmp_path):
    assert training_source("x.txt").shuffle_buffer == 10_000
    assert training_source("x.txt?shuffle_buffer=0").shuffle_buffer == 0
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Q: hi\nA:", "response": " hello"}) + "\n")
    stream = ExampleStream(str(pairs), seq_bytes=64, prompt_bytes=16, seed=0)
    assert stream.kind == "prompt"
    (index, ex), = stream.take(1)
    assert ex.text == "Q: hi\nA: hello" and ex.loss_from == len("Q: hi\nA:")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ConfigError, match="bad.jsonl:1: each line needs a field 'text'"):
        training_source(str(bad))


def test_distill_on_a_limited_streamed_cache_trains_on_its_chunks(corpus, tmp_path, tokenizers):
    """`mergekd cache --limit-chunks 5` over parquet shards, then `distill --cache` with a shuffle buffer: the run
    trains on the cache's 5 chunks only (any other index would be outside the cache and refused), across epochs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from teacher_fixtures import save_tiny_teacher

    from mergekd.cache import capture_cache
    from mergekd.distill import distill, load_config

    root, _ = corpus
    teacher = f"hf:{save_tiny_teacher(tmp_path / 'teacher', tokenizers('gpt2'), max_positions=256)}"
    spec = f"{root}/*.parquet?shuffle_buffer=4"
    capture_cache(tmp_path / "cache", [teacher], spec, seq_bytes=200, limit_chunks=5, max_length=128,
                  show_progress=False)
    cfg = load_config(None, {"teachers": [teacher], "cache": str(tmp_path / "cache"), "data": spec,
                             "student": "new:llama?tokenizer=gpt2&layers=1&hidden=32&heads=2&ctx=256",
                             "out": str(tmp_path / "run"), "steps": 3, "batch_size": 4, "seq_bytes": 200,
                             "trie_kl_weight": 1.0, "kl_weight": 0.0, "byte_ce_weight": 0.0, "device": "cpu",
                             "teacher_max_length": 128})
    distill(cfg, show_progress=False)
    meta = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["data_position"] == {"epoch": 2, "offset": 2}  # 12 examples over 5-chunk epochs
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(r["trie_kl"] > 0 for r in lines)
