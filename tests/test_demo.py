"""``mergekd demo`` end to end at tiny scale: real text slices, two tiny teachers with different real tokenizers,
a tiny student with a third; the report's numbers must be the numbers of the files it points to, and a rerun
must reuse every finished step instead of recomputing it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from teacher_fixtures import save_tiny_teacher

from mergekd.assets import read_body, text_slice
from mergekd.demo import DemoConfig, prepare_data, run_demo
from mergekd.errors import ConfigError

STUDENT = "new:llama?tokenizer=mistral-v3&layers=1&hidden=32&heads=2&ctx=256"


def test_text_slices_are_disjoint_whole_characters_without_the_licence():
    body = read_body("botchan")
    assert "PROJECT GUTENBERG" not in body.upper().replace("END OF PROJECT GUTENBERG'S", "")
    head, tail = text_slice("botchan", 0, 1000), text_slice("botchan", -1000)
    assert body.startswith(head) and body.endswith(tail)
    assert len(head.encode()) <= 1000 and len(tail.encode()) <= 1000
    assert len(head.encode()) + len(tail.encode()) < len(body.encode())


def test_prepare_data_refuses_slices_larger_than_the_book(tmp_path):
    with pytest.raises(ConfigError, match="exceeds"):
        prepare_data(DemoConfig(out=tmp_path, train_bytes=10_000_000))
    with pytest.raises(ConfigError, match="train_bytes"):
        DemoConfig(out=tmp_path, train_bytes=100).check()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tokenizers):
    root = tmp_path_factory.mktemp("demo")
    teachers = [f"hf:{save_tiny_teacher(root / name, tokenizers(name), seed=i, logit_scale=1.5)}"
                for i, name in enumerate(["gpt2", "smollm2"])]
    cfg = DemoConfig(out=root / "out", teachers=teachers, student=STUDENT, train_bytes=3_000, heldout_bytes=600,
                     seq_bytes=256, steps=6, batch_size=4, score_chunk_bytes=300, teacher_max_length=256,
                     kl_weight=0.5, byte_ce_weight=1.0, trie_kl_weight=1.0)  # every loss term
    report = run_demo(cfg, log=lambda m: None, show_progress=False)
    return cfg, report


def test_demo_report_matches_its_files(demo_run):
    from mergekd.score import score

    cfg, report = demo_run
    out = cfg.out
    assert (out / "demo.md").read_text().startswith("| model |")
    saved = json.loads((out / "demo.json").read_text())
    assert saved["rows"] == report["rows"]
    kinds = [r["kind"] for r in report["rows"]]
    assert kinds == ["teacher", "teacher", "mixture", "student", "student"]
    ce, distilled = report["rows"][-2:]
    # token-level BPB is the export's own eval.json; byte-rule BPB is a fresh score of the exported folder
    for row in (ce, distilled):
        assert row["token_bpb"] == json.loads((Path(row["folder"]) / "eval.json").read_text())["bpb"]
    rescored = score([f"hf:{ce['folder']}"], out / "data" / "heldout.txt", mix=None, chunk_bytes=300)
    assert math.isclose(rescored.teachers[0].bpb, ce["byte_bpb"], rel_tol=1e-6)
    assert report["gain_bits_per_byte"] == pytest.approx(ce["byte_bpb"] - distilled["byte_bpb"])
    # the distilled run really trained from the cache with the byte head; the CE-only run had no teacher
    card = (Path(distilled["folder"]) / "README.md").read_text()
    assert "byte head: parallel" in card and "trie_kl × 1" in card and "kl × 0.5" in card and "gpt2" in card
    assert "token_ce × 1 (baseline: no teachers)" in (Path(ce["folder"]) / "README.md").read_text()
    # each run lives in a folder named by its config fingerprint, under ce-only/ and distilled/
    assert Path(ce["folder"]).parent.parent == out / "ce-only"
    assert Path(distilled["folder"]).parent.parent == out / "distilled"


def test_demo_rerun_skips_finished_steps(demo_run, monkeypatch):
    import mergekd.cache as cache_mod
    import mergekd.distill as distill_mod

    cfg, report = demo_run
    captured, trained = [], []
    real_capture = cache_mod.capture_cache

    def counting_capture(*args, **kwargs):
        captured.append(1)
        return real_capture(*args, **kwargs)  # resumes: every shard is there, so no teacher loads

    def no_training(*args, **kwargs):
        trained.append(1)
        raise AssertionError("a finished student run was trained again")

    monkeypatch.setattr(cache_mod, "capture_cache", counting_capture)
    monkeypatch.setattr(distill_mod, "distill", no_training)
    import mergekd.score as score_mod

    calls = []
    real_score = score_mod.score
    monkeypatch.setattr(score_mod, "score", lambda *a, **k: calls.append(a[0]) or real_score(*a, **k))
    again = run_demo(cfg, log=lambda m: None, show_progress=False)
    assert again["rows"] == report["rows"]
    assert trained == [] and captured == [1]
    assert calls == [[f"hf:{row['folder']}" for row in report["rows"][-2:]]]  # only the cheap student scoring
