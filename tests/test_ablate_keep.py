"""``mergekd ablate`` reruns keep finished work (issue "no finished work deleted"): a new held-out text re-scores
the existing exports, a changed training setting moves the old cell folder aside, more steps resume, an owned
teacher cache of other options is moved aside, and a dry run refuses a bad cell in one line, writing nothing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from teacher_fixtures import save_tiny_teacher
from test_ablate import BASE, REPO, _cfg

from mergekd.ablate import run_ablation
from mergekd.ablate.data import target_path
from mergekd.errors import ConfigError

TINY = {"steps": 2, "batch_size": 2, "seq_bytes": 200, "save_every": 2, "warmup_steps": 1, "device": "cpu",
        "lr": 3e-3, "teacher_max_length": 128}
NEW_EVAL = "asset:botchan[-2400:-1200]"  # disjoint from BASE's data and from its eval text


def _run(cfg, out: Path):
    """Run quietly; returns the result and the console's lines (wide, so a message is never wrapped)."""
    buf = io.StringIO()
    result = run_ablation(cfg, out, console=Console(file=buf, width=10_000), show_progress=False)
    return result, buf.getvalue().splitlines()


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _refuse_training(monkeypatch):
    import mergekd.distill as distill_pkg

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(distill_pkg, "distill", refuse)


def test_new_eval_data_rescores_the_exports_without_retraining(tmp_path, monkeypatch):
    from mergekd.evaluate import evaluate_file
    from mergekd.student import load_student

    out = tmp_path / "out"
    grid = {"teachers": ["none"]}
    first, _ = _run(_cfg(base=TINY, grid=grid, seeds=[0, 1]), out)  # two runs: ce-only seeds 0 and 1
    models = {r["seed"]: out / "cells" / r["id"] / f"seed-{r['seed']}" / "final" / "model.safetensors"
              for r in first.rows}
    before = {seed: _stamp(p) for seed, p in models.items()}

    _refuse_training(monkeypatch)
    again, lines = _run(_cfg(base={**TINY, "eval_data": NEW_EVAL}, grid=grid, seeds=[0, 1]), out)
    assert [r["status"] for r in again.rows] == ["re-scored", "re-scored"]
    assert {seed: _stamp(p) for seed, p in models.items()} == before  # same files, same inodes: not retrained
    eval_file = target_path(NEW_EVAL, out)
    for old, row in zip(first.rows, again.rows):
        model, tok = load_student(f"hf:{models[row['seed']].parent}")
        assert row["bpb"] == evaluate_file(model, tok, eval_file)["bpb"] != old["bpb"]
        saved = json.loads((models[row["seed"]].parents[1] / "result.json").read_text())
        assert saved["bpb"] == row["bpb"] and saved["fingerprint"] == old["fingerprint"]
    assert sum("re-scoring its export" in line for line in lines) == 2
    assert not list((out / "cells").rglob("*.old-*"))  # nothing moved aside

    third, _ = _run(_cfg(base={**TINY, "eval_data": NEW_EVAL}, grid=grid, seeds=[0, 1]), out)
    assert [r["status"] for r in third.rows] == ["skipped", "skipped"]


def test_changed_training_setting_moves_the_old_cell_aside(tmp_path):
    out = tmp_path / "out"
    first, _ = _run(_cfg(base=TINY, grid={"teachers": ["none"]}), out)
    cell = out / "cells" / "ce-only"
    model = _stamp(cell / "final" / "model.safetensors")

    again, lines = _run(_cfg(base={**TINY, "lr": 1e-3}, grid={"teachers": ["none"]}), out)
    aside = out / "cells" / "ce-only.old-1"
    assert _stamp(aside / "final" / "model.safetensors") == model  # the old model, untouched
    assert json.loads((aside / "result.json").read_text())["bpb"] == first.rows[0]["bpb"]
    assert again.rows[0]["status"] == "ran" and again.rows[0]["fingerprint"] != first.rows[0]["fingerprint"]
    assert json.loads((cell / "cell.json").read_text())["config"]["lr"] == 1e-3
    moved = [line for line in lines if "moved" in line]
    assert len(moved) == 1 and str(cell) in moved[0] and str(aside) in moved[0]


def test_checkpoints_of_other_settings_are_moved_aside(tmp_path):
    out = tmp_path / "out"
    _run(_cfg(base=TINY, grid={"teachers": ["none"]}), out)
    cell = out / "cells" / "ce-only"
    (cell / "result.json").unlink()  # interrupted before its result ...
    meta = next((cell / "checkpoints").glob("step-*")) / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "other"}))  # ... by other settings
    again, lines = _run(_cfg(base=TINY, grid={"teachers": ["none"]}), out)
    assert again.rows[0]["status"] == "ran"
    kept = cell / "checkpoints.old-1"
    assert json.loads((next(kept.glob("step-*")) / "meta.json").read_text())["fingerprint"] == "other"
    assert any("checkpoints of ce-only belong to other settings" in line and str(kept) in line for line in lines)


def test_more_steps_resume_and_fewer_steps_move_the_cell_aside(tmp_path, monkeypatch):
    import mergekd.distill.loop as loop

    out = tmp_path / "out"
    _run(_cfg(base=TINY, grid={"teachers": ["none"]}), out)
    cell = out / "cells" / "ce-only"
    two_steps = _stamp(cell / "final" / "model.safetensors")

    trained: list[int] = []
    real = loop._train_step
    monkeypatch.setattr(loop, "_train_step", lambda run, step: trained.append(step) or real(run, step))
    longer, _ = _run(_cfg(base={**TINY, "steps": 4}, grid={"teachers": ["none"]}), out)
    assert longer.rows[0]["status"] == "resumed" and trained == [2, 3]  # steps 3 and 4 only, not 1 to 4
    assert [json.loads(x)["step"] for x in (cell / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert _stamp(cell / "final.old-1" / "model.safetensors") == two_steps  # the 2-step export is kept
    assert json.loads((cell / "result.json").read_text())["steps"] == 4

    trained.clear()
    shorter, lines = _run(_cfg(base={**TINY, "steps": 3}, grid={"teachers": ["none"]}), out)
    assert shorter.rows[0]["status"] == "ran" and trained == [0, 1, 2]  # a model cannot be shortened
    assert json.loads((out / "cells" / "ce-only.old-1" / "result.json").read_text())["steps"] == 4
    assert any("trained for 4 steps, more than steps=3" in line for line in lines)


def test_owned_cache_of_changed_settings_is_moved_aside_and_named(tmp_path, tokenizers):
    teacher = save_tiny_teacher(tmp_path / "tiny-gpt2", tokenizers("gpt2"), seed=3, logit_scale=0.5)
    grid = {"teachers": [[f"hf:{teacher}"]], "kl_weight": [0.5]}
    out = tmp_path / "out"
    _run(_cfg(base=TINY, grid=grid, cache={"top_k": 8}, teacher_eval=False, teacher_device="cpu"), out)
    (cache,) = [p for p in (out / "cache").iterdir() if p.is_dir()]
    files = {p.relative_to(cache): _stamp(p) for p in cache.rglob("*") if p.is_file()}

    again, lines = _run(_cfg(base=TINY, grid=grid, cache={"top_k": 4}, teacher_eval=False,
                             teacher_device="cpu"), out)
    aside = cache.with_name(f"{cache.name}.old-1")
    assert {p.relative_to(aside): _stamp(p) for p in aside.rglob("*") if p.is_file()} == files  # kept whole
    assert json.loads((cache / "manifest.json").read_text())["top_k"] == 4  # captured again in its place
    named = [line for line in lines if f"cache {cache}" in line and "moved" in line]
    assert len(named) == 1 and str(aside) in named[0] and ("KB" in named[0] or "MB" in named[0])
    assert again.rows[0]["status"] == "ran"  # its targets changed: the cell is trained again ...
    assert (out / "cells" / f"{again.rows[0]['id']}.old-1" / "final" / "model.safetensors").is_file()  # ... kept


def test_dry_run_refuses_a_misspelt_mixer_in_one_line_and_writes_nothing(tmp_path):
    import yaml

    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"base": dict(BASE), "grid": {
        "teachers": [["smollm2-135m", "gemma3-270m"]], "mix": ["linear", "lineer"]}}))
    before = _stamp(config)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no COLUMNS: the error line must not wrap on a pipe
    proc = subprocess.run([sys.executable, "-m", "mergekd", "ablate", str(config), "--out", str(out), "--dry-run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "ablation cell smollm2+gemma3__lineer (grid): mix: unknown mixers 'lineer'" in lines[0], lines[0]
    assert "Did you mean 'linear'" in lines[0]
    assert not out.exists() and _stamp(config) == before


@pytest.mark.parametrize("change, message", [
    ({"grid": {"teachers": [["smollm2-135m", "gemma3-270m"]], "mix": ["linear:wieghts=0.5"]}},
     r"ablation cell smollm2\+gemma3__linear-wieghts-0.5 \(grid\): mix: mixer 'linear': unknown option 'wieghts'"),
    ({"grid": {"teachers": [["smollm2-135m", "no-such-teacher"]]}},
     r"ablation cell smollm2\+no \(grid\): teachers: unknown teachers 'no-such-teacher'"),
    ({"base": {"student": "new:llama?tokenizer=gpt2&layerz=2"}}, r"ablation cell ce-only \(grid\): student: unknown option\(s\) \['layerz'\]"),
    ({"base": {"eval_data": "missing.txt"}}, r"ablation cell ce-only: eval_data file missing.txt does not exist"),
    ({"sample_eval": {"prompts": "asset:botchan[-1200:]", "mix": "lineer"}}, r"sample_eval\.mix: unknown mixers 'lineer'"),
])
def test_dry_run_names_the_cell_and_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        run_ablation(_cfg(**change), tmp_path / "out", dry_run=True, console=Console(file=io.StringIO()))
    assert not (tmp_path / "out").exists()


def test_reset_accelerate_tolerates_only_a_missing_hook(monkeypatch):
    from accelerate.state import AcceleratorState

    from mergekd.ablate.run import _reset_accelerate

    calls = []
    monkeypatch.setattr(AcceleratorState, "_reset_state", staticmethod(lambda: calls.append(1)))
    _reset_accelerate()
    assert calls == [1]
    monkeypatch.delattr(AcceleratorState, "_reset_state")
    _reset_accelerate()  # an accelerate without the hook: nothing to reset
    monkeypatch.setattr(AcceleratorState, "_reset_state", staticmethod(lambda: 1 / 0), raising=False)
    with pytest.raises(ZeroDivisionError):
        _reset_accelerate()

