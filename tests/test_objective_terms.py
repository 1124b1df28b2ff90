"""The objective as a list of registered terms: the flags are sugar for the list (same weights, bit for bit), a
plugin term added through an entry point trains from YAML and from the CLI and shows up in metrics.jsonl and the
model card, and term settings that cannot take effect are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mergekd.errors import ConfigError
from teacher_fixtures import save_tiny_teacher

STUDENT = "new:llama?tokenizer=gpt2&layers=1&hidden=32&heads=2&ctx=256"
TEXT = ("The old man was thin and gaunt with deep wrinkles in the back of his neck. The brown blotches of the "
        "benevolent skin cancer the sun brings from its reflection on the tropic sea were on his cheeks. ") * 3

PLUGIN = '''
"""A third-party objective term: the mean squared logit per example (needs nothing from mergekd's inputs)."""
from pydantic import Field

from mergekd.objective import ObjectiveTerm, TermOptions
from mergekd.objective.context import per_example_mean


class LogitL2Options(TermOptions):
    scale: float = Field(1.0, gt=0, description="multiplies the squared logits")


class LogitL2(ObjectiveTerm):
    name = "logit-l2"
    Options = LogitL2Options

    def per_example(self, ctx):
        b, length, _ = ctx.logits.shape
        squares = self.options.scale * ctx.logits.pow(2).mean(-1).reshape(-1)
        example = __import__("torch").arange(b, device=ctx.logits.device).repeat_interleave(length)
        return per_example_mean(squares, example, b)
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizers):
    root = tmp_path_factory.mktemp("terms")
    (root / "train.txt").write_text(TEXT, encoding="utf-8")
    save_tiny_teacher(root / "teacher", tokenizers("gpt2"), max_positions=256)
    return root


def _base(work, out: str) -> dict:
    return {"student": STUDENT, "data": str(work / "train.txt"), "out": str(work / out), "steps": 3,
            "batch_size": 2, "seq_bytes": 128, "device": "cpu", "save_every": 100}


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "final" / "model.safetensors"))


def test_flags_are_sugar_for_the_term_list(work):
    from mergekd.distill import distill, load_config

    teacher = f"hf:{work / 'teacher'}"
    flags = load_config(None, {**_base(work, "flags"), "teachers": [teacher], "trie_kl_weight": 3.0,
                               "kl_weight": 0.0, "byte_ce_weight": 0.0})
    listed = load_config(None, {**_base(work, "listed"), "teachers": [teacher],
                                "objective": ["token_ce", {"term": "trie_kl", "weight": 3}]})
    assert [t.spec() for t in flags.terms()] == [t.spec() for t in listed.terms()]
    distill(flags, show_progress=False)
    distill(listed, show_progress=False)
    a, b = _weights(work / "flags"), _weights(work / "listed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (work / "listed" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "token_ce", "trie_kl"} <= rows[-1].keys()


def test_term_settings_that_cannot_take_effect_are_refused(work):
    from mergekd.distill import load_config

    base = _base(work, "x")
    with pytest.raises(ConfigError, match="objective: unknown objective terms 'trie_k'. Did you mean 'trie-kl'"):
        load_config(None, {**base, "objective": ["token_ce", "trie_k"]})
    with pytest.raises(ConfigError, match="trie_kl reads teacher rows.*--teachers"):
        load_config(None, {**base, "objective": ["token_ce", "trie_kl:weight=3"]})
    with pytest.raises(ConfigError, match="replaces kl_weight"):
        load_config(None, {**base, "teachers": [f"hf:{work / 'teacher'}"], "kl_weight": 1.0,
                           "objective": ["token_ce", "trie_kl"]})
    with pytest.raises(ConfigError, match="no term with weight > 0 reads their rows"):
        load_config(None, {**base, "teachers": [f"hf:{work / 'teacher'}"], "objective": ["token_ce"]})
    with pytest.raises(ConfigError, match=r"trie_kl.*depth.*less than or equal to 64"):
        load_config(None, {**base, "objective": [{"term": "trie_kl", "depth": 99}]})
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(None, {**base, "objective": ["token_ce", "ce"]})


@pytest.fixture
def plugin_env(tmp_path):
    """A plugin distribution installed on the path: one module and an entry point in mergekd.objective_terms."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "mergekd_logit_l2.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "mergekd_logit_l2-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mergekd-logit-l2\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mergekd.objective_terms]\nlogit-l2 = mergekd_logit_l2:LogitL2\n")
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _mergekd(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "mergekd", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_a_plugin_term_trains_from_yaml_and_cli(work, plugin_env, tmp_path):
    base = _base(work, "unused")
    common = ["--student", STUDENT, "--data", base["data"], "--steps", "3", "--batch-size", "2",
              "--seq-bytes", "128", "--device", "cpu", "--quiet"]
    cli = _mergekd(["distill", *common, "--out", tmp_path / "cli", "--term", "token_ce",
                    "--term", "logit-l2:weight=0.01,scale=2"], plugin_env, tmp_path)
    assert cli.returncode == 0, cli.stderr
    (tmp_path / "run.yaml").write_text(textwrap.dedent("""\
        objective:
          - {term: token_ce}
          - {term: logit-l2, weight: 0.01, scale: 2}
        """))
    yaml_run = _mergekd(["distill", "-c", tmp_path / "run.yaml", *common, "--out", tmp_path / "yaml"], plugin_env,
                        tmp_path)
    assert yaml_run.returncode == 0, yaml_run.stderr
    for out in ("cli", "yaml"):
        last = json.loads((tmp_path / out / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["logit-l2"] > 0 and last["loss"] == pytest.approx(last["token_ce"] + 0.01 * last["logit-l2"],
                                                                     rel=1e-4)
        card = (tmp_path / out / "final" / "README.md").read_text()
        assert "logit-l2 × 0.01 (scale=2.0)" in card
    a, b = _weights(tmp_path / "cli"), _weights(tmp_path / "yaml")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = _mergekd(["distill", *common, "--out", tmp_path / "bad", "--term", "logit-l2:scale=-1"], plugin_env,
                   tmp_path)
    assert bad.returncode == 2 and "scale" in bad.stderr and "Traceback" not in bad.stderr


def test_ablate_baseline_of_a_term_list_grid_keeps_only_the_token_ce(tmp_path):
    import yaml

    from mergekd.ablate.config import expand_cells, load_ablation

    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    cfg = {"base": {"student": STUDENT, "data": str(tmp_path / "t.txt"), "eval_data": str(tmp_path / "t.txt"),
                    "objective": [{"term": "token_ce"}, {"term": "trie_kl", "weight": 3}]},
           "grid": {"teachers": ["gpt2", "none"]}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(cfg))
    cells = {c.id: c.config for c in expand_cells(load_ablation(tmp_path / "grid.yaml"), tmp_path / "out")}
    assert [t.name for t in cells["gpt2"].terms()] == ["token_ce", "trie_kl"]
    assert [t.name for t in cells["ce-only"].terms()] == ["token_ce"] and cells["ce-only"].teachers == []
