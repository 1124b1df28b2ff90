"""Data sources (mergekd.sources): every kind of file gives the same documents and chunks as mergekd.data, read
lazily through datasets; errors are one line naming the file, row and field; the shuffled order is a pure function
of (seed, epoch, position) and resumes exactly."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from itertools import islice

import pytest
from conftest import ADVERSARIAL  # conftest also sets HF_HUB_OFFLINE=1: the hub test must not touch the network

from mergekd.assets import read_body
from mergekd.data import load_chunks
from mergekd.errors import ConfigError, EmptyTextError
from mergekd.sources import (
    DataSource, epoch_seed, iter_chunks, iter_documents, iter_records, parse_source, shuffle_buffered)

SEQ = 256
# Cells that a careless reader changes: CRLF, NUL, lone "\r", "NA"/"null" (pandas' missing values), numbers,
# U+2028 (str.splitlines splits there), a leading space.
TRICKY = ["", "NA", "null", "0042", "a\r\nb\rc\u2028d", " lead", "\x00nul", "👩‍👩‍👧‍👦 e\u0301"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("sources")
    text = read_body("botchan")[:20000]  # real text with CRLF line ends
    cuts = [0, 4000, 9000, 15000, len(text)]
    docs = [text[a:b] for a, b in zip(cuts, cuts[1:])] + TRICKY + ADVERSARIAL[:8]
    (root / "book.txt").write_bytes(text.encode("utf-8"))
    with open(root / "docs.jsonl", "w", encoding="utf-8") as fh:
        for i, doc in enumerate(docs):
            fh.write(json.dumps({"id": i, "text": doc}) + "\n")
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), root / "docs.parquet")
    ds = datasets.Dataset.from_dict({"id": list(range(len(docs))), "body": docs})
    ds.to_csv(str(root / "docs.csv"), index=False)
    ds.save_to_disk(str(root / "saved"))
    shutil.copy(root / "saved" / "data-00000-of-00001.arrow", root / "stream.arrow")  # IPC stream format
    with pa.ipc.new_file(str(root / "file.arrow"), pa.schema([("text", pa.string())])) as writer:  # IPC file
        writer.write_table(pa.table({"text": docs}))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(root / "dict"))
    (root / "shards").mkdir()
    half = len(docs) // 2
    ds.select(range(half)).to_parquet(str(root / "shards" / "part-0.parquet"))
    ds.select(range(half, len(docs))).to_parquet(str(root / "shards" / "part-1.parquet"))
    (root / "texts").mkdir()
    for i, doc in enumerate(d for d in docs if d):
        (root / "texts" / f"doc-{i:02d}.txt").write_bytes(doc.encode("utf-8"))
    return root, docs


KINDS = ["docs.jsonl", "docs.parquet", "docs.csv?text_field=body", "saved?text_field=body",
         "stream.arrow?text_field=body", "file.arrow", "dict?text_field=body&split=test",
         "shards/*.parquet?text_field=body", "texts/doc-*.txt"]


@pytest.mark.parametrize("spec", KINDS)
def test_every_kind_gives_the_same_documents_and_chunks(corpus, spec):
    root, docs = corpus
    source = parse_source(f"{root}/{spec}")
    assert [doc for _, doc in iter_documents(source)] == [d for d in docs if d]  # exact text, empties skipped
    assert list(iter_chunks(source, SEQ)) == load_chunks(root / "docs.jsonl", SEQ)


def test_txt_and_jsonl_equal_load_chunks(corpus):
    root, docs = corpus
    book = list(iter_chunks(str(root / "book.txt"), SEQ))
    assert book == load_chunks(root / "book.txt", SEQ) and "\r\n" in "".join(book)  # CRLF kept
    assert list(iter_documents(root / "book.txt")) == [(0, (root / "book.txt").read_bytes().decode("utf-8"))]
    assert list(iter_chunks(root / "docs.jsonl", 37)) == load_chunks(root / "docs.jsonl", 37)
    indices = [i for i, _ in iter_documents(root / "docs.jsonl")]  # record positions: the empty record is skipped
    assert indices == [i for i, d in enumerate(docs) if d]


def test_txt_line_and_paragraph_modes(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("first line\r\nsecond  \n\n  \r\nthird é\nfourth\n\n\nlast".encode("utf-8"))
    lines = [doc for _, doc in iter_documents(f"{path}?txt_mode=line")]
    assert lines == ["first line", "second  ", "  ", "third é", "fourth", "last"]
    paragraphs = list(iter_documents(parse_source(f"{path}?txt_mode=paragraph")))
    assert paragraphs == [(0, "first line\r\nsecond  "), (1, "third é\nfourth"), (2, "last")]


def test_prompt_and_chat_records(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"q": "Q: 2+2?\nA:", "a": " 4."}) + "\n" + json.dumps({"q": "Hi", "a": None}) + "\n")
    source = parse_source(f"{path}?prompt_field=q&response_field=a")
    assert list(iter_documents(source)) == [(0, "Q: 2+2?\nA: 4."), (1, "Hi")]
    with pytest.raises(ConfigError, match=r"pairs.jsonl:2: missing field 'a'.*response_field"):
        list(iter_records(source))
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"m": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}))
    with pytest.raises(ConfigError, match="chat template"):
        iter_documents(f"{chats}?messages_field=m")

    def render(messages, where):
        return "<u>" + messages[0]["content"], "<a>" + messages[1]["content"]

    assert list(iter_documents(f"{chats}?messages_field=m", render=render)) == [(0, "<u>Hi<a>Yo")]


def test_errors_are_one_line_naming_the_place_and_the_fix(corpus, tmp_path):
    root, _ = corpus

    def error(fn) -> str:
        with pytest.raises(ConfigError) as info:
            fn()
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "does not exist" in error(lambda: iter_chunks(str(tmp_path / "nope.jsonl"), SEQ))  # eager, before reading
    assert "no file matches" in error(lambda: iter_chunks(f"{tmp_path}/none-*.parquet", SEQ))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    message = error(lambda: list(iter_chunks(bad, SEQ)))
    assert "bad.jsonl:2: missing field 'text'" in message and "?text_field=" in message
    assert "no field 'text' (fields: id, body)" in error(lambda: list(iter_chunks(root / "docs.csv", SEQ)))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert "latin.txt is not UTF-8 (byte 3)" in error(lambda: list(iter_chunks(latin, SEQ)))
    assert "latin.txt:1: not UTF-8" in error(lambda: list(iter_chunks(f"{latin}?txt_mode=line", SEQ)))
    message = error(lambda: parse_source("data.jsonl?text_feild=body"))
    assert "unknown option 'text_feild'" in message and "text_field" in message
    assert "has no value" in error(lambda: parse_source("data.jsonl?split"))
    assert "txt_mode=line applies to .txt files only" in error(lambda: parse_source("d.parquet?txt_mode=line"))
    assert "shuffle_buffer" in error(lambda: parse_source("d.parquet?shuffle_buffer=-1"))
    assert "no split 'valid'" in error(lambda: iter_chunks(f"{root}/dict?split=valid&text_field=body", SEQ).__next__())
    assert "split=test applies to hub datasets" in error(lambda: iter_chunks(f"{root}/docs.jsonl?split=test", SEQ))
    message = error(lambda: iter_chunks("hub:mergekd-tests/no-such-dataset?split=train", SEQ))
    assert "mergekd-tests/no-such-dataset" in message and "local Hugging Face cache" in message
    assert "hub reachable" in message
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n")
    with pytest.raises(EmptyTextError):
        list(iter_chunks(blank, SEQ))


def test_spec_strings_round_trip_and_keep_glob_wildcards():
    source = parse_source("data/part-?.parquet?text_field=a+b%26c&shuffle_buffer=64")
    assert source.path == "data/part-?.parquet" and source.text_field == "a b&c" and source.shuffle_buffer == 64
    assert parse_source(source.to_spec()) == source
    hub = parse_source("hub:owner/name?config=en&split=validation")
    assert (hub.hub_id, hub.config, hub.split) == ("owner/name", "en", "validation")
    assert parse_source(hub.to_spec()) == hub and DataSource(path="x.txt").to_spec() == "x.txt"


def test_shuffle_is_a_pure_function_of_seed_epoch_and_position(corpus):
    root, _ = corpus
    plain = list(iter_chunks(root / "docs.jsonl", 64))
    source = parse_source(f"{root}/docs.jsonl?shuffle_buffer=16")
    full = list(iter_chunks(source, 64, seed=3))
    assert sorted(full) == sorted(plain) and full != plain
    assert full == list(iter_chunks(source, 64, seed=3))  # same seed, same order
    assert full != list(iter_chunks(source, 64, seed=3, epoch=1)) != list(iter_chunks(source, 64, seed=4))
    for n in (0, 1, 15, 16, 17, len(full) // 2, len(full) - 1, len(full), len(full) + 5):
        assert list(iter_chunks(source, 64, seed=3, start=n)) == full[n:]
    assert list(iter_chunks(root / "docs.jsonl", 64, start=7)) == plain[7:]
    assert epoch_seed(3, 1) == 3 * 1_000_003 + 1
    assert list(shuffle_buffered(range(50), 8, 5)) == list(shuffle_buffered(iter(range(50)), 8, 5))
    assert list(shuffle_buffered(range(5), 0, 5)) == list(range(5))


def test_reading_is_lazy(tmp_path):
    """The first chunk of a 20 MB JSON-lines file comes before the file is read: Python memory stays a small
    fraction of the file (the reader parses 1 MB pieces; nothing builds a list of documents)."""
    big = tmp_path / "big.jsonl"
    line = json.dumps({"text": "lazy words " * 90}) + "\n"
    big.write_text(line * (20_000_000 // len(line)))
    assert big.stat().st_size > 19_000_000
    next(iter_chunks(big, 512))  # warm-up: imports and datasets' module caches are not the data
    tracemalloc.start()
    try:
        first = next(iter_chunks(big, 512))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first.startswith("lazy words")
    assert peak < 6_000_000, f"reading one chunk peaked at {peak:,} bytes"
    assert len(list(islice(iter_chunks(f"{big}?shuffle_buffer=100", 512, seed=1), 3))) == 3
