"""Distillation end to end at tiny scale: two teachers with different tokenizers, resume after SIGKILL,
2-process data parallel, export that loads without mergekd, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_causal_lm

from mergekd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizers):
    """Two tiny teachers (GPT-2 and Mistral tokenizers) as hf: folders, a train and a held-out text."""
    from mergekd.assets import read_body

    root = tmp_path_factory.mktemp("distill")
    specs = []
    for i, name in enumerate(["gpt2", "mistral-v1"]):
        tok = tokenizers(name)
        model = tiny_causal_lm(len(tok), seed=10 + i, logit_scale=0.5)
        folder = root / f"teacher-{name}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        specs.append(f"hf:{folder}")
    text = read_body("botchan")  # the book without its Gutenberg header and licence
    (root / "train.txt").write_text(text[:6000])
    (root / "heldout.txt").write_text(text[-2000:])
    config = {
        "teachers": specs,
        "student": "new:llama?tokenizer=mistral-v3&layers=1&hidden=32&heads=2&ctx=256",
        "data": str(root / "train.txt"),
        "steps": 8, "batch_size": 4, "seq_bytes": 200, "save_every": 2, "warmup_steps": 2,
        "teacher_max_length": 128, "device": "cpu", "lr": 3e-3,
    }
    (root / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    return root, config


def _run(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mergekd", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "final" / "model.safetensors"))


def _finish(args) -> None:
    proc = _run(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out


def _kill_after(args, out: Path, checkpoint: str) -> None:
    """Start a run and SIGKILL it once its latest checkpoint is ``checkpoint`` or later (it must still be running)."""
    killed = _run(args)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= checkpoint:
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run finished before it could be killed; make it longer"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (out / "final").exists()


def test_sigkill_and_rerun_gives_the_uninterrupted_result(setup):
    root, _ = setup
    cfg = str(root / "config.yaml")
    _finish(["distill", "-c", cfg, "--out", str(root / "straight"), "--quiet"])
    _kill_after(["distill", "-c", cfg, "--out", str(root / "killed"), "--quiet"], root / "killed", "step-000004")
    _finish(["distill", "-c", cfg, "--out", str(root / "killed"), "--quiet"])
    a, b = _weights(root / "straight"), _weights(root / "killed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    steps = [json.loads(line)["step"] for line in (root / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no duplicated or missing metric lines after the resume


def test_two_processes_equal_one(setup):
    root, _ = setup
    cfg = str(root / "config.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "mergekd", "distill", "-c", cfg, "--out", str(root / "one"),
                          "--steps", "3", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29571", "-m", "mergekd", "distill", "-c", cfg,
                          "--out", str(root / "two"), "--steps", "3", "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = _weights(root / "one"), _weights(root / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_export_is_a_plain_model_and_eval_scores_it(setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekd.distill import distill, load_config
    from mergekd.evaluate import evaluate_file

    root, config = setup
    cfg = load_config(None, {**config, "out": str(root / "export"), "steps": 2,
                             "eval_data": str(root / "heldout.txt")})
    final = distill(cfg, show_progress=False)
    weights = load_file(str(final / "model.safetensors"))
    assert not any("head" in k and "lm_head" not in k for k in weights)  # the byte head is not exported
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    card = (final / "README.md").read_text()
    assert "teachers:" in card and "held-out bits per byte" in card
    result = evaluate_file(model, tok, root / "heldout.txt")
    recorded = json.loads((final / "eval.json").read_text())
    assert abs(result["bpb"] - recorded["bpb"]) < 1e-4 and result["bytes"] == recorded["bytes"]


def test_config_errors_name_the_field(setup):
    from mergekd.distill import load_config

    root, config = setup
    with pytest.raises(ConfigError, match="steps"):
        load_config(None, {**config, "out": "x", "steps": 0})
    with pytest.raises(ConfigError, match="byte_hed"):
        load_config(None, {**config, "out": "x", "byte_hed": "parallel"})
    with pytest.raises(ConfigError, match="kl_loss: unknown losses 'forward-k'. Did you mean 'forward-kl'"):
        load_config(None, {**config, "out": "x", "kl_loss": "forward-k"})


def test_streamed_parquet_run_killed_and_resumed_matches(setup):
    """The same guarantee over a streamed source: two parquet shards, a small shuffle buffer and more examples
    than one epoch holds, so the resumed run must seek to the recorded (epoch, offset) data position."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, config = setup
    lines = (root / "train.txt").read_text().split("\n")
    paragraphs = ["\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    shards = root / "shards"
    shards.mkdir()
    half = len(paragraphs) // 2
    for i, part in enumerate((paragraphs[:half], paragraphs[half:])):
        pq.write_table(pa.table({"body": part}), shards / f"part-{i}.parquet")
    cfg = root / "stream.yaml"
    cfg.write_text(json.dumps({**config, "data": f"{shards}/*.parquet?text_field=body&shuffle_buffer=8",
                               "steps": 12, "save_every": 2}))
    _finish(["distill", "-c", str(cfg), "--out", str(root / "s-straight"), "--quiet"])
    _kill_after(["distill", "-c", str(cfg), "--out", str(root / "s-killed"), "--quiet"], root / "s-killed",
                "step-000006")
    latest = root / "s-killed" / "checkpoints" / "latest"
    meta = json.loads((root / "s-killed" / "checkpoints" / latest.read_text().strip() / "meta.json").read_text())
    assert meta["data_position"]["epoch"] >= 1 or meta["data_position"]["offset"] > 0
    _finish(["distill", "-c", str(cfg), "--out", str(root / "s-killed"), "--quiet"])
    a, b = _weights(root / "s-straight"), _weights(root / "s-killed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
