"""``mergekd ablate`` with ``seeds:``: the statistics over seeds on known numbers (t quantiles, mean/sd/95%
interval, paired differences to the CE-only baseline of the same seed) through the report functions, the config
rules (no seed axis), the run layout moves, and a real 2-seed grid: rerun skips every (cell, seed) run, a lost
result.json resumes that run only, changed settings move only that run aside, and going from one seed to two
(and back) keeps the finished run."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console
from teacher_fixtures import save_tiny_teacher
from test_ablate import _cfg

from mergekd.ablate import expand_cells, run_ablation
from mergekd.ablate.plan import Plan
from mergekd.ablate.report import print_table, table_rows, write_reports
from mergekd.ablate.stats import T975, paired_differences, summarize, t975
from mergekd.errors import ConfigError

TINY = {"steps": 2, "batch_size": 2, "seq_bytes": 200, "save_every": 2, "warmup_steps": 1, "device": "cpu",
        "lr": 3e-3, "teacher_max_length": 128}


# ------------------------------------------------------------------------------------------------------------
# statistics


def _t_cdf(t: float, df: int, n: int = 4000) -> float:
    """Student's t CDF by Simpson's rule on its density (no scipy)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def f(x: float) -> float:
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    h = t / n
    return 0.5 + h / 3 * (f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n)))


def test_t_quantiles_match_known_values_and_the_t_distribution():
    known = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042,
             40: 2.021, 60: 2.000, 120: 1.980}  # printed t tables, 0.975 column
    for df, value in known.items():
        assert t975(df) == pytest.approx(value, abs=6e-4), df
    for df in [*range(1, 31), 31, 45, 80, 500]:  # table and expansion both solve CDF(t) = 0.975
        assert _t_cdf(t975(df), df) == pytest.approx(0.975, abs=1e-8), df
    assert len(T975) == 30 and 1.96 < t975(10_000) < 1.9603
    with pytest.raises(ValueError):
        t975(0)


def test_mean_sd_and_interval_on_known_numbers():
    s = summarize([2.0, 2.2, 2.4])
    half = 4.302652730 * 0.2 / math.sqrt(3)
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.2) and s["sd"] == pytest.approx(0.2)
    assert s["half"] == pytest.approx(half) and (s["lo"], s["hi"]) == pytest.approx((2.2 - half, 2.2 + half))
    two = summarize([1.0, 2.0])  # sd = 1/√2, half = 12.706 · (1/√2)/√2 = 6.353
    assert two["sd"] == pytest.approx(math.sqrt(0.5)) and two["half"] == pytest.approx(12.706204736 / 2)
    assert summarize([2.5]) == {"n": 1, "mean": 2.5, "sd": None, "half": None, "lo": None, "hi": None}  # no fake
    assert summarize([])["mean"] is None
    assert paired_differences({0: 2.0, 1: 2.2, 2: 2.4}, {2: 2.5, 0: 2.1}) == pytest.approx({0: -0.1, 2: -0.1})


CELL = "smollm2__kl0.5"
CELL_BPB = {0: 2.0, 1: 2.2, 2: 2.4}
CE_BPB = {0: 2.1, 1: 2.4, 2: 2.5}  # paired differences -0.1, -0.2, -0.1


def _plan(tmp_path, seeds):
    cfg = _cfg(grid={"teachers": ["smollm2-135m", "none"], "kl_weight": [0.5]},
               **({"seeds": seeds} if seeds is not None else {}))
    return Plan(cfg, tmp_path, expand_cells(cfg, tmp_path))


def _record(cell: str, seed: int, bpb: float, status: str = "ran") -> dict:
    return {"id": cell, "seed": seed, "bpb": bpb, "bytes": 1200, "final_loss": 3.0 + seed, "steps": 3,
            "seconds": 10.0, "status": status}


def test_reports_give_mean_sd_interval_and_paired_difference_per_cell(tmp_path):
    plan = _plan(tmp_path, [0, 1, 2])
    assert plan.seeds == [0, 1, 2] and plan.nested
    rows = [_record(c, s, v[s]) for s in (0, 1, 2) for c, v in ((CELL, CELL_BPB), ("ce-only", CE_BPB))]
    columns, table = table_rows(plan, rows)
    for name in ("seeds", "n_seeds", "bpb", "bpb_sd", "bpb_ci95_lo", "bpb_ci95_hi", "delta_vs_ce", "delta_sd",
                 "delta_ci95_lo", "delta_ci95_hi", "bpb_per_seed"):
        assert name in columns
    cell, ce = table
    half = 4.302652730 * 0.2 / math.sqrt(3)
    assert cell["cell"] == CELL and cell["seeds"] == "0 1 2" and cell["n_seeds"] == 3
    assert cell["bpb"] == pytest.approx(2.2) and cell["bpb_sd"] == pytest.approx(0.2)
    assert (cell["bpb_ci95_lo"], cell["bpb_ci95_hi"]) == pytest.approx((2.2 - half, 2.2 + half))
    # differences -0.1, -0.2, -0.1: mean -2/15, sd √(1/300)
    d_mean, d_sd = -0.4 / 3, math.sqrt(((1 / 30) ** 2 * 2 + (2 / 30) ** 2) / 2)
    d_half = 4.302652730 * d_sd / math.sqrt(3)
    assert cell["delta_vs_ce"] == pytest.approx(d_mean) and cell["delta_sd"] == pytest.approx(d_sd)
    assert (cell["delta_ci95_lo"], cell["delta_ci95_hi"]) == pytest.approx((d_mean - d_half, d_mean + d_half))
    assert cell["final_loss"] == pytest.approx(4.0) and cell["seconds"] == 30.0
    assert ce["bpb"] == pytest.approx(7.0 / 3) and ce["delta_vs_ce"] is None and ce["delta_sd"] is None

    files = write_reports(plan, rows, [], png=True)
    with files["csv"].open() as fh:
        saved = list(csv.DictReader(fh))
    assert float(saved[0]["bpb_ci95_hi"]) == pytest.approx(2.2 + half) and saved[1]["delta_ci95_lo"] == ""
    assert [float(x) for x in saved[0]["bpb_per_seed"].split()] == [2.0, 2.2, 2.4]
    md = files["md"].read_text()
    assert "| bpb_sd |" in md and f"| {2.2 - half:.4f} |" in md and "t(0.975, n-1)" in md
    payload = json.loads(files["json"].read_text())
    assert payload["seeds"] == [0, 1, 2] and payload["total_runs"] == 6 and len(payload["cells"]) == 6
    assert payload["table"][0]["bpb_sd"] == pytest.approx(0.2)
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    buf = io.StringIO()
    print_table(plan, rows, [], Console(file=buf, width=200))
    out = buf.getvalue()
    assert f"2.2000 ± {half:.4f}" in out and f"{d_mean:+.4f} ± {d_half:.4f}" in out


def test_pairs_only_same_seeds_and_a_single_value_gets_no_interval(tmp_path):
    plan = _plan(tmp_path, [0, 1, 2])
    # mid-grid: the cell has seeds 0 and 1, CE-only only seed 0 → one paired difference, no interval for it
    rows = [_record(CELL, 0, 2.0), _record("ce-only", 0, 2.1), _record(CELL, 1, 2.4)]
    _, (cell, ce) = table_rows(plan, rows)
    assert cell["n_seeds"] == 2 and cell["bpb_ci95_lo"] is not None
    assert cell["delta_vs_ce"] == pytest.approx(-0.1) and cell["delta_ci95_lo"] is None
    assert ce["n_seeds"] == 1 and ce["bpb"] == 2.1 and ce["bpb_sd"] is None and ce["bpb_ci95_hi"] is None
    buf = io.StringIO()
    print_table(plan, rows, [], Console(file=buf, width=200))
    assert "2.1000 ±" not in buf.getvalue() and "-0.1000 ±" not in buf.getvalue()


def test_one_seed_keeps_the_single_run_table_and_layout(tmp_path):
    for seeds in (None, [0]):
        plan = _plan(tmp_path, seeds)
        assert plan.seeds == [0] and not plan.nested
        cell = plan.cells[0]
        assert plan.run_folder(cell, 0) == cell.config.out == tmp_path / "cells" / CELL
        assert plan.run(cell, 0).config == cell.config and plan.run(cell, 0).name == CELL
        columns, (row, _) = table_rows(plan, [_record(CELL, 0, 2.0), _record("ce-only", 0, 2.1)])
        assert columns == ["cell", "teachers", "kl_weight", "bpb", "delta_vs_ce", "bytes", "final_loss", "steps",
                           "seconds", "teacher_specs"]
        assert row["bpb"] == 2.0 and row["delta_vs_ce"] == 2.0 - 2.1
    plan = _plan(tmp_path, [3])  # one seed other than the base one: same layout, that seed trained
    assert not plan.nested and plan.run(plan.cells[0], 3).config.seed == 3


# ------------------------------------------------------------------------------------------------------------
# config and layout


@pytest.mark.parametrize("raw, message", [
    ({"grid": {"seed": [0, 1]}}, r"grid\.seed: seeds are not an axis: list them in the top-level `seeds: "),
    ({"cells": [{"seed": 1}]}, r"cells\[0\]\.seed: seeds are not an axis"),
    ({"seeds": []}, r"seeds: empty list"),
    ({"seeds": [0, 1, 0]}, r"repeats a seed"),
    ({"seeds": [0, -1]}, r"non-negative"),
    ({"seeds": [1, 2], "base": {"seed": 0}}, r"base\.seed: 0 is not among seeds \[1, 2\]"),
])
def test_seed_settings_have_one_spelling(raw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**raw)


def test_dry_run_lists_the_runs(tmp_path):
    buf = io.StringIO()
    plan = run_ablation(_cfg(grid={"teachers": ["none"], "lr": [1e-3, 3e-3]}, seeds=[0, 1, 2], base={"seed": 1}),
                        tmp_path / "out", dry_run=True, console=Console(file=buf, width=300))
    assert plan.seeds == [0, 1, 2] and len(plan.runs()) == 6
    assert "2 cells (dry run; seeds 0, 1, 2: 6 runs; each runs in" in buf.getvalue() and "seed-<s>" in buf.getvalue()
    assert not (tmp_path / "out").exists()


def _fake_run(folder: Path, seed: int) -> None:
    (folder / "final").mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps({"config": {"seed": seed}}))
    (folder / "result.json").write_text("{}")


def test_layout_moves_are_finished_after_an_interruption(tmp_path):
    from mergekd.ablate.layout import arrange

    said: list[str] = []
    root = tmp_path / "cells" / "c"
    _fake_run(root, 0)
    _fake_run(root / "seed-1", 1)  # a seed folder kept inside a single-seed run
    arrange(root, [0, 1], True, "c", said.append)
    assert sorted(p.name for p in root.iterdir()) == ["seed-0", "seed-1"]
    assert (root / "seed-0" / "result.json").is_file() and (root / "seed-1" / "final").is_dir()
    arrange(root, [0, 1], True, "c", said.append)  # nothing to do the second time
    assert len(said) == 1 and "moved its single-seed run (seed 0)" in said[0]

    arrange(root, [1], False, "c", said.append)  # back to one seed: seed 1 moves up, seed 0 kept inside
    assert sorted(p.name for p in root.iterdir()) == ["cell.json", "final", "result.json", "seed-0"]
    assert json.loads((root / "cell.json").read_text())["config"]["seed"] == 1

    # killed half-way through the move into seed folders: the next arrange finishes it
    (root.parent / "c.to-seeds").mkdir()
    for child in list(root.iterdir()):
        child.rename(root.parent / "c.to-seeds" / child.name)
    root.rmdir()
    arrange(root, [0, 1], True, "c", said.append)
    assert sorted(p.name for p in root.iterdir()) == ["seed-0", "seed-1"] and not (root.parent / "c.to-seeds").exists()

    # one seed that has no run here: the other seeds' folder is moved aside whole
    arrange(root, [5], False, "c", said.append)
    assert not root.exists() and sorted(p.name for p in (root.parent / "c.old-1").iterdir()) == ["seed-0", "seed-1"]
    assert "not seed 5" in said[-1]


# ------------------------------------------------------------------------------------------------------------
# a real grid with two seeds


def _run(cfg, out: Path):
    buf = io.StringIO()
    result = run_ablation(cfg, out, console=Console(file=buf, width=10_000), show_progress=False)
    return result, buf.getvalue().splitlines()


def _mtimes(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")
            if p.name in ("result.json", "model.safetensors")}


def test_two_seeds_resume_per_cell_and_seed(tmp_path, tokenizers, monkeypatch):
    import mergekd.distill as distill_pkg

    teacher = save_tiny_teacher(tmp_path / "tiny-gpt2", tokenizers("gpt2"), seed=3, logit_scale=0.5)
    out = tmp_path / "out"

    def cfg(seeds=None, **base):
        return _cfg(base={**TINY, **base}, grid={"teachers": [[f"hf:{teacher}"], "none"], "kl_weight": [0.5]},
                    cache={"top_k": 8}, teacher_eval=False, teacher_device="cpu",
                    **({"seeds": seeds} if seeds is not None else {}))

    one, _ = _run(cfg(), out)  # today's grid: one seed, OUT/cells/<id>/
    ids = [r["id"] for r in one.rows]
    assert len(ids) == 2 and ids[1] == "ce-only" and all((out / "cells" / i / "result.json").is_file() for i in ids)

    # a second seed: the finished seed-0 runs move to seed-0/ and are skipped, only seed 1 trains
    two, lines = _run(cfg([0, 1]), out)
    assert [(r["id"], r["seed"], r["status"]) for r in two.rows] == [
        (ids[0], 0, "skipped"), (ids[1], 0, "skipped"), (ids[0], 1, "ran"), (ids[1], 1, "ran")]
    assert sum("moved its single-seed run (seed 0)" in line for line in lines) == 2
    for r in two.rows:
        folder = out / "cells" / r["id"] / f"seed-{r['seed']}"
        saved = json.loads((folder / "result.json").read_text())
        assert saved["bpb"] == r["bpb"] and saved["export"] == str(folder / "final") == r["export"]
        assert json.loads((folder / "cell.json").read_text())["config"]["seed"] == r["seed"]
    by = {(r["id"], r["seed"]): r["bpb"] for r in two.rows}
    assert by[ids[0], 0] == one.rows[0]["bpb"] and by[ids[0], 0] != by[ids[0], 1]  # the seed changes the run
    cell = two.table[0]
    assert cell["n_seeds"] == 2 and cell["bpb"] == pytest.approx((by[ids[0], 0] + by[ids[0], 1]) / 2)
    diffs = [by[ids[0], s] - by[ids[1], s] for s in (0, 1)]
    assert cell["delta_vs_ce"] == pytest.approx(sum(diffs) / 2)
    assert cell["delta_sd"] == pytest.approx(abs(diffs[0] - diffs[1]) / math.sqrt(2))
    with open(out / "results.csv") as fh:
        assert float(next(csv.DictReader(fh))["bpb_ci95_hi"]) == pytest.approx(cell["bpb_ci95_hi"])

    # rerun: nothing trains, nothing is rewritten
    before = _mtimes(out)
    monkeypatch.setattr(distill_pkg, "distill", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a finished run was trained again")))
    again, _ = _run(cfg([0, 1]), out)
    assert [r["status"] for r in again.rows] == ["skipped"] * 4 and _mtimes(out) == before
    monkeypatch.undo()

    # one (cell, seed) lost its result: only that run resumes (from its last checkpoint: no step is redone)
    lost = out / "cells" / ids[0] / "seed-1"
    (lost / "result.json").unlink()
    metrics = (lost / "metrics.jsonl").read_text()
    third, _ = _run(cfg([0, 1]), out)
    assert [r["status"] for r in third.rows] == ["skipped", "skipped", "resumed", "skipped"]
    assert third.rows[2]["bpb"] == pytest.approx(by[ids[0], 1], abs=1e-6)
    assert (lost / "metrics.jsonl").read_text() == metrics

    # another run was trained with other settings: that run alone is moved aside (kept) and trained again
    for name in ("cell.json", "result.json"):
        marker = out / "cells" / ids[1] / "seed-0" / name
        marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "other"}))
    fourth, lines = _run(cfg([0, 1]), out)
    assert [r["status"] for r in fourth.rows] == ["skipped", "ran", "skipped", "skipped"]
    assert (out / "cells" / ids[1] / "seed-0.old-1" / "final" / "model.safetensors").is_file()
    assert any("training settings of ce-only (seed 0) changed" in line for line in lines)

    # back to one seed: seed 0's runs move up to OUT/cells/<id>/ and are skipped
    monkeypatch.setattr(distill_pkg, "distill", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a finished run was trained again")))
    single, _ = _run(cfg(), out)
    assert [r["status"] for r in single.rows] == ["skipped", "skipped"]
    assert single.rows[0]["bpb"] == one.rows[0]["bpb"] and (out / "cells" / ids[0] / "seed-1" / "final").is_dir()
