"""``mergekd ablate``: config validation, cell expansion (CE-only collapse, stable ids), a tiny 3-cell grid end
to end from one shared teacher cache (CSV/MD/PNG match each cell's own eval), rerun skips, resume."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
from teacher_fixtures import save_tiny_teacher

from mergekd.ablate import expand_cells, load_ablation, parse_ablation, run_ablation
from mergekd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STUDENT = "new:llama?tokenizer=mistral-v3&layers=1&hidden=32&heads=2&ctx=256"
BASE = {"student": STUDENT, "data": "asset:botchan[0:2400]", "eval_data": "asset:botchan[-1200:]"}


def _cfg(**kw):
    raw = {"base": dict(BASE), "grid": {}}
    for key, value in kw.items():
        if key == "base":
            raw["base"].update(value)
        else:
            raw[key] = value
    return parse_ablation(raw)


# ------------------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("raw, message", [
    ({"grid": {"mixx": ["linear"]}}, r"grid\.mixx: not a distill setting; did you mean mix"),
    ({"grid": {"kl_weigth": [0.1]}}, r"did you mean kl_weight"),
    ({"base": {"out": "x"}}, r"base\.out: set by ablate"),
    ({"grid": {"cache": ["x"]}}, r"grid\.cache: set by ablate"),
    ({"base": {"eval_data": None}}, r"base\.eval_data: required"),
    ({"grid": {"teachers": [[1, 2]]}}, r"grid\.teachers\[0\]: teacher specs are strings"),
    ({"grid": {"teachers": [["a", "none"]]}}, r"write `none` \(or \[\]\) alone"),
    ({"grid": {"mix": []}}, r"grid\.mix: empty list"),
    ({"cache": {"top_k": 0}}, r"cache\.top_k"),
    ({"surprise": 1}, r"surprise"),
])
def test_config_errors_name_the_field_and_the_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**raw)


def test_unknown_text_and_bad_cell_values_are_refused_before_running(tmp_path):
    with pytest.raises(ConfigError, match="did you mean botchan"):
        _cfg(base={"data": "asset:botchen[0:100]"})
    with pytest.raises(ConfigError, match=r"base\.data: cannot read"):
        _cfg(base={"data": "asset:botchan[0-100]"})
    cfg = _cfg(grid={"teachers": ["smollm2-135m"], "kl_weight": [0.1, -1.0]})
    with pytest.raises(ConfigError, match=r"ablation cell smollm2__kl-1 \(grid\): kl_weight: .*greater than"):
        expand_cells(cfg, tmp_path)
    overlap = _cfg(base={"data": "asset:botchan[0:5000]", "eval_data": "asset:botchan[4000:6000]"})
    with pytest.raises(ConfigError, match="overlaps base.data"):
        run_ablation(overlap, tmp_path / "o", dry_run=True)
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("base: [1, 2]\n")
    with pytest.raises(ConfigError, match=str(yaml_file)):
        load_ablation(yaml_file)


# ------------------------------------------------------------------------------------------------------------
# expansion


def test_cells_collapse_the_ce_baseline_and_single_teacher_mixers_with_stable_ids(tmp_path):
    grid = {"teachers": [["smollm2-135m", "gemma3-270m"], "smollm2-135m", "none", []],
            "mix": ["linear", "learned"], "kl_weight": [0.1, 1.0], "byte_head": ["parallel"]}
    extra = [{"teachers": "gemma3-270m", "kl_weight": 2.0, "id": "gemma-strong"},
             {"teachers": "smollm2-135m", "kl_weight": 0.1, "byte_head": "parallel"}]  # equals a grid cell
    cfg = _cfg(grid=grid, cells=extra)
    cells = expand_cells(cfg, tmp_path)
    ids = [c.id for c in cells]
    assert ids == [
        "smollm2+gemma3__linear__kl0.1__parallel", "smollm2+gemma3__linear__kl1__parallel",
        "smollm2+gemma3__learned__kl0.1__parallel", "smollm2+gemma3__learned__kl1__parallel",
        "smollm2__kl0.1__parallel", "smollm2__kl1__parallel", "ce-only", "gemma-strong",
    ]
    assert [c.id for c in expand_cells(cfg, tmp_path)] == ids  # stable
    ce = cells[ids.index("ce-only")]
    assert ce.config.teachers == [] and ce.config.kl_weight == 0 and ce.config.byte_ce_weight == 0
    assert ce.shown("mix") == "-" and ce.shown("kl_weight") == "-"
    single = cells[ids.index("smollm2__kl1__parallel")]
    assert single.config.mix == "linear" and single.config.teachers == ["smollm2-135m"]
    pair = cells[0]
    assert pair.config.teachers == ["smollm2-135m", "gemma3-270m"] and pair.config.out == tmp_path / "cells" / ids[0]
    assert pair.config.data == str(tmp_path / "data" / "botchan.0_2400.txt")
    assert pair.config.eval_data == str(tmp_path / "data" / "botchan.m1200_end.txt")
    assert cells[-1].config.kl_weight == 2.0 and cells[-1].config.teachers == ["gemma3-270m"]
    # any DistillConfig field is an axis; ids name it
    lr_cells = expand_cells(_cfg(grid={"teachers": ["none"], "lr": [0.001, 0.01]}), tmp_path)
    assert [c.id for c in lr_cells] == ["ce-only__lr0.001", "ce-only__lr0.01"]


def test_asset_slices_cut_on_character_boundaries(tmp_path):
    from mergekd.ablate.data import materialize
    from mergekd.text import char_bounds
    from mergekd.assets import read_body, text_slice

    data = "aé日😀b".encode()  # 1 + 2 + 3 + 4 + 1 bytes
    for start in range(-len(data), len(data) + 1):
        for stop in range(-len(data), len(data) + 1):
            a, b = char_bounds(data, start, stop)
            data[a:b].decode("utf-8")  # never a split character
            lo, hi, _ = slice(start, stop).indices(len(data))
            assert lo <= a and b <= max(hi, a)
    path = materialize("asset:botchan[100:400]", tmp_path)
    assert path.read_bytes() == read_body("botchan").encode()[100:400]  # the book, not its Gutenberg licence
    assert path.read_bytes().decode() == text_slice("botchan", 100, 400)
    tail = materialize("asset:botchan[-3000:]", tmp_path).read_bytes().decode()
    assert "Project Gutenberg-tm" not in tail and tail == text_slice("botchan", -3000)  # no licence
    mtime = path.stat().st_mtime_ns
    assert materialize("asset:botchan[100:400]", tmp_path).stat().st_mtime_ns == mtime  # unchanged: not rewritten


def test_shipped_configs_validate_with_dry_run(tmp_path):
    from typer.testing import CliRunner

    from mergekd.cli import app

    for name, cells in [("small", 6), ("large", 24), ("ensemble", 6), ("pretrained-student", 3),
                        ("onpolicy-small", 3)]:
        result = CliRunner().invoke(app, ["ablate", str(REPO / "configs" / "ablations" / f"{name}.yaml"),
                                          "--out", str(tmp_path / name), "--dry-run"], terminal_width=200,
                                     env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"{cells} cells (dry run" in result.output and "ce-only" in result.output
        assert not (tmp_path / name).exists()  # a dry run writes nothing
    # domain-teacher.yaml distils a teacher that benchmarks/domain_teacher.py fine-tunes first: without it, one
    # line naming the missing folder (resolved against the working directory), and nothing written
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mergekd", "ablate", str(REPO / "configs" / "ablations" /
                                                                          "domain-teacher.yaml"),
                           "--out", str(tmp_path / "domain"), "--dry-run"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "'runs/domain-teacher/teacher/final' is neither an existing folder" in lines[0]
    assert not (tmp_path / "domain").exists()


# ------------------------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tokenizers):
    """Two tiny teachers with real, different tokenizers, and a 3-cell ablation over them, run once."""
    root = tmp_path_factory.mktemp("ablate")
    a = save_tiny_teacher(root / "tiny-gpt2", tokenizers("gpt2"), seed=3, logit_scale=0.5)
    b = save_tiny_teacher(root / "tiny-mistral", tokenizers("mistral-v1"), seed=4, logit_scale=0.5)
    specs = [f"hf:{a}", f"hf:{b}"]
    cfg = _cfg(base={"steps": 3, "batch_size": 2, "seq_bytes": 200, "save_every": 3, "warmup_steps": 1,
                     "teacher_max_length": 128, "device": "cpu", "lr": 3e-3},
               grid={"teachers": [specs, [specs[0]], "none"], "mix": ["linear"], "kl_weight": [0.5]},
               cache={"top_k": 8}, teacher_device="cpu")
    out = root / "out"
    result = run_ablation(cfg, out, show_progress=False)
    return {"cfg": cfg, "out": out, "result": result, "specs": specs}


def test_grid_writes_csv_md_png_matching_each_cells_eval(grid):
    out, result = grid["out"], grid["result"]
    ids = [r["id"] for r in result.rows]
    # labels: "tiny" would not tell the two teachers apart, so the ids keep their full folder names
    assert ids == ["tiny-gpt2+tiny-mistral__linear__kl0.5", "tiny-gpt2__kl0.5", "ce-only"]
    assert {r["status"] for r in result.rows} == {"ran"}

    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["cell"] for r in rows] == ids
    ce = json.loads((out / "cells" / "ce-only" / "final" / "eval.json").read_text())["bpb"]
    for row in rows:
        own = json.loads((out / "cells" / row["cell"] / "final" / "eval.json").read_text())
        assert float(row["bpb"]) == own["bpb"] and int(row["bytes"]) == own["bytes"]
        assert math.isfinite(own["bpb"]) and own["bpb"] > 0
        if row["cell"] != "ce-only":
            assert float(row["delta_vs_ce"]) == pytest.approx(own["bpb"] - ce, abs=1e-12)
    assert rows[0]["teacher_specs"] == ",".join(grid["specs"]) and rows[2]["teachers"].startswith("(none")

    md = (out / "results.md").read_text()
    assert all(f"| {i} |" in md for i in ids) and "Teachers on the same held-out text" in md
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(out / "results.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # teacher reference lines: once per teacher, saved, finite
    refs = sorted((out / "teachers").glob("*.json"))
    assert len(refs) == 2 and len(result.teachers) == 2
    assert all(math.isfinite(t["bpb"]) and t["bpb"] > 0 for t in result.teachers)


def test_one_cache_serves_every_teacher_subset(grid):
    from mergekd.cache import read_manifest

    out = grid["out"]
    caches = [p for p in (out / "cache").iterdir() if (p / "manifest.json").is_file()]
    assert len(caches) == 1 and [t.spec for t in read_manifest(caches[0]).teachers] == grid["specs"]
    for cell, n in [("tiny-gpt2+tiny-mistral__linear__kl0.5", 2), ("tiny-gpt2__kl0.5", 1)]:
        config = json.loads((out / "cells" / cell / "cell.json").read_text())["config"]
        view = Path(config["cache"])
        assert [t.spec for t in read_manifest(view).teachers] == grid["specs"][:n]
        assert all((view / t.dir).is_symlink() for t in read_manifest(view).teachers)  # shards are not copied
        metrics = [json.loads(x) for x in (out / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 3 and all(m["kl"] > 0 for m in metrics)  # trained against the cached teachers
    ce_metrics = (out / "cells" / "ce-only" / "metrics.jsonl").read_text()
    assert '"kl"' not in ce_metrics


def test_rerun_skips_finished_cells_and_resumes_an_interrupted_one(grid, monkeypatch):
    import mergekd.distill as distill_pkg

    out = grid["out"]
    watched = [out / "cells" / c / f for c in ("ce-only", "tiny-gpt2__kl0.5") for f in
               ("result.json", "final/model.safetensors")] + sorted((out / "teachers").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in watched}

    def refuse(*args, **kwargs):
        raise AssertionError("distill was called for a finished cell")

    monkeypatch.setattr(distill_pkg, "distill", refuse)
    again = run_ablation(grid["cfg"], out, show_progress=False)
    assert [r["status"] for r in again.rows] == ["skipped"] * 3
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert [r["bpb"] for r in again.rows] == [r["bpb"] for r in grid["result"].rows]
    monkeypatch.undo()

    # a cell killed after its last checkpoint but before its result: the loop's resume finishes it, no retraining
    cell = out / "cells" / "tiny-gpt2__kl0.5"
    (cell / "result.json").unlink()
    lines = (cell / "metrics.jsonl").read_text()
    third = run_ablation(grid["cfg"], out, show_progress=False)
    assert [r["status"] for r in third.rows] == ["skipped", "resumed", "skipped"]
    assert third.rows[1]["bpb"] == pytest.approx(grid["result"].rows[1]["bpb"], abs=1e-6)
    assert (cell / "metrics.jsonl").read_text() == lines


def test_owned_cache_of_other_options_is_captured_again_a_named_one_is_refused(grid, tmp_path):
    """An owned cache of other options is captured again, its old capture moved aside intact (never deleted)."""
    import shutil

    from mergekd.ablate.cache_views import ensure_union_cache
    from mergekd.cache import read_manifest

    source = next(p for p in (grid["out"] / "cache").iterdir() if (p / "manifest.json").is_file())
    data = grid["out"] / "data" / "botchan.0_2400.txt"
    kw = dict(seq_bytes=200, shard_chunks=64, max_length=128, byte_rule="canonical", device="cpu",
              show_progress=False)
    named = tmp_path / "named"
    shutil.copytree(source, named)
    with pytest.raises(ConfigError, match="top_k mismatch"):
        ensure_union_cache(named, grid["specs"], data, top_k=4, tail=1e-3, **kw)
    owned = tmp_path / "owned"
    shutil.copytree(source, owned)
    files = sorted(p.relative_to(owned) for p in owned.rglob("*"))
    manifest = ensure_union_cache(owned, grid["specs"][:1], data, top_k=4, tail=1e-3, owned=True, **kw)
    assert manifest.top_k == 4 and [t.spec for t in read_manifest(owned).teachers] == grid["specs"][:1]
    aside = tmp_path / "owned.old-1"
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == files and read_manifest(aside).top_k == 8



def test_owned_cache_and_views_of_an_older_format_are_rebuilt_a_named_one_is_refused(grid, tmp_path):
    """A grid cache ablate captured with an older mergekd (manifest format version 1) is moved aside intact and
    captured again, and a subset view with an old manifest is rewritten (a view is derived: symlinks + manifest);
    a cache the user named in that format is refused with one line that names the fix, and left as it was."""
    import shutil

    from mergekd.ablate.cache_views import ensure_union_cache, subset_view
    from mergekd.cache import read_manifest

    source = next(p for p in (grid["out"] / "cache").iterdir() if (p / "manifest.json").is_file())
    data = grid["out"] / "data" / "botchan.0_2400.txt"
    held = read_manifest(source)
    kw = dict(seq_bytes=200, shard_chunks=held.shard_chunks, max_length=128, byte_rule="canonical", device="cpu",
              show_progress=False, top_k=held.top_k, tail=held.tail)

    def make_old(folder):
        raw = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**raw, "format_version": 1}))

    named = tmp_path / "named"
    shutil.copytree(source, named)
    make_old(named)
    before = (named / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match="older mergekd .* re-capture it"):
        ensure_union_cache(named, grid["specs"], data, **kw)
    assert (named / "manifest.json").read_bytes() == before and not (tmp_path / "named.old-1").exists()

    owned = tmp_path / "owned"
    shutil.copytree(source, owned)
    make_old(owned)
    files = sorted(p.relative_to(owned) for p in owned.rglob("*"))
    manifest = ensure_union_cache(owned, grid["specs"][:1], data, owned=True, **kw)
    assert [t.spec for t in manifest.teachers] == grid["specs"][:1]
    aside = tmp_path / "owned.old-1"
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == files
    assert json.loads((aside / "manifest.json").read_text())["format_version"] == 1  # kept as it was

    view = subset_view(owned, tmp_path / "view", grid["specs"][:1])
    make_old(view)
    subset_view(owned, view, grid["specs"][:1])
    assert [t.spec for t in read_manifest(view).teachers] == grid["specs"][:1]  # readable again: rewritten

# ------------------------------------------------------------------------------------------------------------
# off- vs on-policy with the teachers' verdict on each cell's own samples (issue 8)


def test_on_policy_grid_reports_teacher_scored_sample_bpb(tmp_path, tokenizers, monkeypatch):
    a = save_tiny_teacher(tmp_path / "tiny-gpt2", tokenizers("gpt2"), seed=3, logit_scale=0.5)
    b = save_tiny_teacher(tmp_path / "tiny-mistral", tokenizers("mistral-v1"), seed=4, logit_scale=0.5)
    specs = [f"hf:{a}", f"hf:{b}"]
    cfg = _cfg(base={"steps": 2, "batch_size": 2, "seq_bytes": 200, "save_every": 2, "warmup_steps": 1,
                     "teacher_max_length": 128, "device": "cpu", "lr": 3e-3, "max_new_tokens": 8,
                     "kl_loss": "jsd"},
               grid={"teachers": [specs], "on_policy": [0, 1], "kl_weight": [1.0]},
               sample_eval={"prompts": "asset:botchan[-1200:]", "num_prompts": 2, "prompt_bytes": 48,
                            "max_new_tokens": 8},
               teacher_eval=False, teacher_device="cpu")
    out = tmp_path / "out"
    result = run_ablation(cfg, out, show_progress=False)
    assert len(result.rows) == 2
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    for row, rec in zip(table, result.rows):
        saved = json.loads((out / "cells" / rec["id"] / "sample_eval.json").read_text())["result"]
        assert math.isfinite(saved["sample_bpb"]) and saved["sample_bytes"] > 0
        assert float(row["sample_bpb"]) == saved["sample_bpb"]
    logged = [out / "cells" / r["id"] / "samples.jsonl" for r in result.rows]
    assert sum(p.is_file() and bool(p.read_text().strip()) for p in logged) == 1  # only the on-policy cell sampled

    # a rerun reuses the verdicts: no judge is loaded, nothing is sampled again
    import mergekd.teachers as teachers_mod

    monkeypatch.setattr(teachers_mod, "load_teacher", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("judges loaded on a rerun")))
    again = run_ablation(cfg, out, show_progress=False)
    assert [r["sample_bpb"] for r in again.rows] == [r["sample_bpb"] for r in result.rows]
