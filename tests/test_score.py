"""``mergekd score``: per-teacher and mixture bits per byte, the data reader, JSON output and error exits.

Fast tests use tiny random teachers saved with real tokenizers (GPT-2: byte-level BPE without BOS;
Mistral v3: SentencePiece with BOS), so the two teachers disagree about which rows they define. The ``slow``
test loads the two real pretrained teachers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from teacher_fixtures import lowercasing_tokenizer, save_tiny_teacher

from mergekd.errors import ConfigError, EmptyTextError, LossyTokenizerError, UnknownNameError
from mergekd.score import actual_bytes, load_score_texts, score
from mergekd.teachers import load_teacher

PROSE = (
    "It was a bright cold day in April, and the clocks were striking thirteen. The hallway smelt of boiled "
    "cabbage and old rag mats.\n\nAt one end of it a coloured poster, too large for indoor display, had been "
    "tacked to the wall. It depicted simply an enormous face, more than a metre wide.\n\n"
    "Outside, even through the shut window-pane, the world looked cold. Down in the street little eddies of "
    "wind were whirling dust and torn paper into spirals — 日本語 too.\n"
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizers):
    root = tmp_path_factory.mktemp("score-teachers")
    return (save_tiny_teacher(root / "gpt2", tokenizers("gpt2"), seed=11),
            save_tiny_teacher(root / "mistral", tokenizers("mistral-v3"), seed=12))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("score-data")
    data = root / "data.txt"
    data.write_text(PROSE, encoding="utf-8")
    fit = root / "fit.jsonl"
    fit.write_text("\n".join(json.dumps({"text": t}) for t in [
        "A different text to fit on. The mixer learns its weights here.",
        "Second fitting document, with numbers 12345 and a café.",
    ]) + "\n", encoding="utf-8")
    return data, fit


CHUNK = 160


@pytest.fixture(scope="module")
def report(folders, data_files):
    """One library run with the default (uniform linear) mixture, shared by the checks below."""
    return score(_teachers(folders), data_files[0], chunk_bytes=CHUNK)


@pytest.fixture(scope="module")
def manual(folders, data_files):
    """Each teacher's byte targets on the same chunks, computed directly through the adapter."""
    texts = load_score_texts(data_files[0], chunk_bytes=CHUNK)
    return texts, actual_bytes(texts), [_targets(f, texts) for f in folders]


def _teachers(folders) -> str:
    return ",".join(f"hf:{f}" for f in folders)


def _manual_bpb(lp: torch.Tensor, mask: torch.Tensor, actual: torch.Tensor) -> float:
    realised = lp.double().gather(1, actual.unsqueeze(1)).squeeze(1)[mask]
    return float(-realised.sum() / mask.sum() / math.log(2))


def _targets(folder, texts):
    teacher = load_teacher(f"hf:{folder}")
    got = teacher.byte_targets(texts)
    return torch.cat([t.logprobs for t in got]), torch.cat([t.mask for t in got])


# ------------------------------------------------------------------------------------------------------------
# Data reading
# ------------------------------------------------------------------------------------------------------------


def test_text_files_are_chunked_losslessly(tmp_path):
    path = tmp_path / "book.txt"
    book = PROSE * 6
    path.write_text(book, encoding="utf-8")
    chunks = load_score_texts(path, chunk_bytes=200)
    assert "".join(chunks) == book and all(len(c.encode()) <= 200 for c in chunks) and len(chunks) > 6
    capped = load_score_texts(path, chunk_bytes=200, max_bytes=450)
    assert "".join(capped) == book.encode()[:450].decode("utf-8", "ignore")
    assert 447 <= sum(len(c.encode()) for c in capped) <= 450


def test_max_bytes_never_splits_a_character(tmp_path):
    path = tmp_path / "cjk.txt"
    path.write_text("日本語のテキスト", encoding="utf-8")
    assert load_score_texts(path, max_bytes=7) == ["日本"]  # the third character would need bytes 7..9


def test_jsonl_documents_and_empty_data(tmp_path, data_files):
    _, fit = data_files
    assert load_score_texts(fit) == [json.loads(line)["text"] for line in fit.read_text().splitlines()]
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(EmptyTextError):
        load_score_texts(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        load_score_texts(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="chunk_bytes"):
        load_score_texts(fit, chunk_bytes=3)


def test_score_reads_every_data_source_kind(tmp_path):
    """score reads through mergekd.sources like distill and eval: a Parquet file, a CSV with another column name
    and a glob of Parquet shards give the chunks of the same documents as JSON lines; max_bytes stops early."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [p for p in PROSE.split("\n\n") if p.strip()] * 2
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    half = len(docs) // 2
    pq.write_table(pa.table({"text": docs[:half]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"text": docs[half:]}), tmp_path / "part-1.parquet")
    with open(tmp_path / "docs.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["body"], *([d] for d in docs)])
    want = load_score_texts(jsonl, chunk_bytes=64)
    assert len(want) > len(docs) and "".join(want) == "".join(docs)  # cut into chunks, nothing lost
    for spec in (tmp_path / "docs.parquet", f"{tmp_path}/part-*.parquet", f"{tmp_path / 'docs.csv'}?text_field=body"):
        assert load_score_texts(spec, chunk_bytes=64) == want, spec
    capped = load_score_texts(tmp_path / "docs.parquet", chunk_bytes=64, max_bytes=100)
    assert "".join(capped) == "".join(want).encode()[:100].decode("utf-8", "ignore")


# ------------------------------------------------------------------------------------------------------------
# Per-teacher scores (independent of the mixers)
# ------------------------------------------------------------------------------------------------------------


def test_per_teacher_bpb_matches_manual_computation(report, manual):
    texts, actual, targets = manual
    assert report.bytes == len(PROSE.encode()) == actual.numel() and report.chunks == len(texts) > 2
    for entry, (lp, mask) in zip(report.teachers, targets):
        assert entry.bytes_scored == int(mask.sum())
        assert entry.bpb == pytest.approx(_manual_bpb(lp, mask, actual), rel=1e-9)
        assert 0 < entry.bpb < 40 and entry.vocab_size in (50257, 32768)
    common = targets[0][1] & targets[1][1]
    assert report.common_bytes == int(common.sum())
    assert report.teachers[0].bpb_common == pytest.approx(_manual_bpb(targets[0][0], common, actual), rel=1e-9)
    # GPT-2 has no BOS: the first token of every chunk is unpredicted; Mistral (BOS) predicts every byte
    assert report.teachers[0].bytes_scored < report.bytes == report.teachers[1].bytes_scored


def test_teachers_are_loaded_one_at_a_time(folders, data_files, monkeypatch):
    import mergekd.teachers.adapter as teachers_pkg  # the one loader every teacher loop goes through

    live, peak = [], []
    real_load = teachers_pkg.load_teacher

    def tracking_load(spec, *args, **kwargs):
        teacher = real_load(spec, *args, **kwargs)
        live.append(teacher)
        peak.append(sum(t.model is not None for t in live))
        return teacher

    monkeypatch.setattr(teachers_pkg, "load_teacher", tracking_load)
    small = score(_teachers(folders), data_files[0], mix=None, max_bytes=120)
    assert peak == [1, 1] and all(t.model is None for t in live)
    assert small.bytes == 120 and small.mixture is None and small.to_json()["mixture"] is None


def test_bad_teacher_lists_fail_before_loading(folders, data_files, monkeypatch, tmp_path):
    import mergekd.teachers.adapter as teachers_pkg  # the one loader every teacher loop goes through
    from mergekd.teachers import MissingTeacherError

    def no_load(*args, **kwargs):
        raise AssertionError("a teacher was loaded although the list is invalid")

    monkeypatch.setattr(teachers_pkg, "load_teacher", no_load)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, _ = data_files
    with pytest.raises(MissingTeacherError, match="qwen2.5-0.5b.*not on this machine.*hf download Qwen"):
        score(f"hf:{folders[0]},qwen2.5-0.5b", data, mix=None)
    with pytest.raises(MissingTeacherError, match="not on this machine"):
        score(f"hf:{folders[0]},gguf:{tmp_path / 'absent.gguf'}", data, mix=None)
    with pytest.raises(UnknownNameError, match="smollm2-135m"):
        score(f"hf:{folders[0]},smollm2-13m", data, mix=None)
    with pytest.raises(ConfigError, match="listed twice"):
        score(f"hf:{folders[0]},hf:{folders[0]}", data, mix=None)
    with pytest.raises(ConfigError, match="empty"):
        score(" , ", data, mix=None)


# ------------------------------------------------------------------------------------------------------------
# Mixtures (need mergekd.mix)
# ------------------------------------------------------------------------------------------------------------


def test_linear_mixture_is_the_average_where_both_teachers_speak(report, manual):
    _, actual, [(lp0, m0), (lp1, m1)] = manual
    p0 = lp0.double().gather(1, actual.unsqueeze(1)).squeeze(1).exp()
    p1 = lp1.double().gather(1, actual.unsqueeze(1)).squeeze(1).exp()
    # uniform weights renormalised over the teachers defined at each row
    p = torch.where(m0 & m1, (p0 + p1) / 2, torch.where(m0, p0, p1))
    defined = m0 | m1
    expected = float(-(p[defined].log().sum()) / defined.sum() / math.log(2))
    mix = report.mixture
    assert mix is not None and mix.name == "linear" and mix.bytes_scored == int(defined.sum())
    assert mix.bpb == pytest.approx(expected, rel=1e-6)
    assert set(mix.weights) == {t.name for t in report.teachers}
    assert sum(mix.weights.values()) == pytest.approx(1.0)


def test_learned_mixer_needs_separate_fit_data(folders, data_files):
    data, fit = data_files
    with pytest.raises(ConfigError, match="--fit-data"):
        score(_teachers(folders), data, mix="learned")
    with pytest.raises(ConfigError, match="different text"):
        score(_teachers(folders), data, mix="learned", fit_data=data)
    report = score(_teachers(folders), data, mix="learned", fit_data=fit, max_bytes=300)
    assert report.mixture.fit_bytes == sum(len(t.encode()) for t in load_score_texts(fit))
    assert set(report.mixture.weights) == {t.name for t in report.teachers}
    assert math.isfinite(report.mixture.bpb)


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def _run(args):
    from mergekd.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def test_cli_score_writes_json(folders, data_files, tmp_path, report):
    data, _ = data_files
    out = tmp_path / "out" / "score.json"
    result = _run(["score", "--teachers", _teachers(folders), "--data", str(data), "--json", str(out),
                   "--chunk-bytes", str(CHUNK)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["bytes"] == report.bytes and set(payload["teachers"]) == {f"hf:{f}" for f in folders}
    for t in report.teachers:
        assert payload["teachers"][t.name]["bpb"] == pytest.approx(t.bpb, rel=1e-12)
        assert f"{t.bpb:.4f}" in result.output
    assert payload["mixture"]["name"] == "linear"
    assert payload["mixture"]["bpb"] == pytest.approx(report.mixture.bpb, rel=1e-12)
    assert set(payload["mixture"]["weights"]) == set(payload["teachers"])
    assert f"{report.mixture.bpb:.4f}" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["score.json"]  # no temporary file left behind


def test_cli_errors_exit_nonzero(folders, data_files, tmp_path, tokenizers):
    import subprocess
    import sys

    data, _ = data_files
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    lossy = save_tiny_teacher(tmp_path / "lossy", lowercasing_tokenizer(tokenizers("gpt2")))
    cases = [
        (["--teachers", f"hf:{folders[0]}", "--data", str(tmp_path / "nope.txt")], ConfigError, "does not exist"),
        (["--teachers", f"hf:{folders[0]}", "--data", str(empty)], EmptyTextError, "no text"),
        (["--teachers", "smollm2-13m", "--data", str(data)], UnknownNameError, "Did you mean"),
        (["--teachers", f"hf:{lossy}", "--data", str(data), "--mix", "none"], LossyTokenizerError,
         "does not reproduce"),
    ]
    for args, error, match in cases:
        result = _run(["score", *args])
        assert result.exit_code != 0 and isinstance(result.exception, error), (args, result.output)
        assert match in str(result.exception)
    # through the real entry point: one red line, exit status 2, no traceback
    proc = subprocess.run([sys.executable, "-m", "mergekd", "score", "--teachers", f"hf:{folders[0]}", "--data",
                           str(empty)], capture_output=True, text=True)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------------------
# Real pretrained teachers (minutes on first run: builds the safetensors caches)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_teachers_score_english_prose(tmp_path, request):
    """SmolLM2-135M and Gemma-3-270m on 3,000 characters of Botchan: finite, well under 2 bits per byte.
    Runs only when selected (``pytest -m slow``): the first run dequantises both GGUF files (minutes)."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("loads the real pretrained teachers (minutes): run with  pytest -m slow")
    from mergekd.assets import read_text

    data = tmp_path / "botchan.txt"
    data.write_text(read_text("botchan")[:3000], encoding="utf-8")
    report = score("smollm2-135m,gemma3-270m", data, mix="linear")
    assert [t.name for t in report.teachers] == ["smollm2-135m", "gemma3-270m"]
    for t in report.teachers:
        assert math.isfinite(t.bpb) and 0.3 < t.bpb < 2.0, t
        assert t.bytes_scored > 0.95 * report.bytes
    assert math.isfinite(report.mixture.bpb) and report.mixture.bpb < 2.0
    from mergekd.io import write_json

    write_json(tmp_path / "real.json", report.to_json(), indent=2)
