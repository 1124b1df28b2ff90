"""Bad input, tried as a user would: every case runs the real ``mergekd`` command in a subprocess and asserts exit
status 2, one line on stderr without a traceback that names the bad value, and that no file the user had was
changed or deleted. Cases that need teachers use tiny random models on real tokenizers (no downloads)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from teacher_fixtures import save_tiny_teacher

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
        "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass doors. ")
STUDENT = "new:llama?tokenizer=gpt2&layers=1&hidden=32&heads=2&ctx=256"


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mergekd", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` → (inode, sha256): a changed, replaced or deleted file shows up."""
    return {str(p.relative_to(root)): (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizers):
    """A user's folder: a training text, a tiny teacher folder and a tiny byte cache of it."""
    from mergekd.cache import capture_cache

    root = tmp_path_factory.mktemp("user")
    (root / "train.txt").write_text(TEXT * 4, encoding="utf-8")
    teacher = save_tiny_teacher(root / "teacher", tokenizers("gpt2"), max_positions=256)
    capture_cache(root / "cache", [f"hf:{teacher}"], root / "train.txt", seq_bytes=128, show_progress=False)
    return root


@pytest.fixture
def user(work):
    """The user's folder with a snapshot taken; the test body must leave every file as it was."""
    before = snapshot(work)
    yield work
    after = snapshot(work)
    assert {k: v for k, v in after.items() if k in before} == before, "a user file changed or vanished"


# ---------------------------------------------------------------------------------------------------------
# data that is not what it claims to be


def test_score_refuses_a_non_utf8_jsonl_line(user):
    bad = user / "bad.jsonl"
    if not bad.exists():
        bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    line = assert_refused(run_cli("score", "--teachers", f"hf:{user / 'teacher'}", "--data", bad, cwd=user),
                          "bad.jsonl:2", "not UTF-8")
    assert "0xe9" in line


def test_fidelity_reads_data_through_the_common_reader(user):
    latin = user / "latin1.txt"
    if not latin.exists():
        latin.write_bytes("naïve café".encode("latin-1"))
    assert_refused(run_cli("fidelity", "--teacher", f"hf:{user / 'teacher'}", "--data", latin, cwd=user),
                   "latin1.txt", "not UTF-8")


def test_distill_refuses_malformed_jsonl(user):
    bad = user / "broken.jsonl"
    if not bad.exists():
        bad.write_text('{"text": "one"}\n{"text": \n', encoding="utf-8")
    assert_refused(run_cli("distill", "--ce-only", "--student", STUDENT, "--data", bad, "--out", user / "runs/x",
                           cwd=user), "broken.jsonl:2", "not valid JSON")
    assert not (user / "runs/x").exists()


def test_config_file_that_is_not_utf8(user):
    cfg = user / "latin.yaml"
    if not cfg.exists():
        cfg.write_bytes("student: caf\xe9\n".encode("latin-1"))
    assert_refused(run_cli("distill", "-c", cfg, cwd=user), "latin.yaml", "not UTF-8")


# ---------------------------------------------------------------------------------------------------------
# settings that cannot take effect


@pytest.mark.parametrize("flags, needles", [
    (["--kl-weight", "1"], ["kl_weight=1", "needs teacher rows", "--teachers"]),
    (["--trie-kl-weight", "3"], ["trie_kl_weight=3", "--teachers"]),
    (["--device", "cuda:1"], ["cuda:1"]),
    (["--ce-only", "--teachers", "gpt2"], ["--ce-only", "--teachers"]),
    (["--teachers", "gpt2", "--mix", "lineer"], ["lineer", "Did you mean 'linear'"]),
    (["--teachers", "smolm2-135m", "--trie-kl-weight", "3"], ["smolm2-135m", "Did you mean 'smollm2-135m'"]),
    (["--teachers", "gpt2", "--byte-head", "paralel"], ["paralel", "Did you mean 'parallel'"]),
    (["--student", "new:llama?layers=2"], ["needs tokenizer=NAME"]),
])
def test_distill_refuses_settings_before_loading_anything(user, flags, needles):
    args = ["distill", "--student", STUDENT, "--data", user / "train.txt", "--out", user / "runs/refused"]
    if "--student" in flags:
        args[2] = flags[flags.index("--student") + 1]
        flags = []
    assert_refused(run_cli(*args, *flags, cwd=user), *needles)
    assert not (user / "runs/refused").exists()


def test_mix_typo_is_caught_before_a_teacher_loads(user):
    # the teacher path does not exist: if it were loaded first, the error would be about the path
    assert_refused(run_cli("distill", "--teachers", "hf:/nonexistent/teacher", "--mix", "lineer", "--student",
                           STUDENT, "--data", user / "train.txt", "--out", user / "runs/m", cwd=user), "'lineer'")


def test_cache_made_with_another_rule_or_window_is_refused(user):
    base = ["distill", "--cache", user / "cache", "--student", STUDENT, "--data", user / "train.txt", "--seq-bytes",
            "128", "--trie-kl-weight", "1", "--steps", "1", "--out", user / "runs/c"]
    assert_refused(run_cli(*base, "--byte-rule", "exact:K=4", cwd=user),
                   "byte_rule mismatch", "byte_rule=canonical", "byte_rule=exact:K=4")
    assert_refused(run_cli(*base, "--teacher-max-length", "64", cwd=user),
                   "max_length mismatch", "max_length=256", "max_length=64", "--teacher-max-length 256")


def test_fit_data_with_a_cache_or_a_fixed_mixer_is_refused(user):
    base = ["distill", "--student", STUDENT, "--data", user / "train.txt", "--seq-bytes", "128",
            "--trie-kl-weight", "1", "--fit-data", user / "train.txt", "--out", user / "runs/f"]
    assert_refused(run_cli(*base, "--cache", user / "cache", "--mix", "learned", cwd=user), "fit_data", "cache")
    assert_refused(run_cli(*base, "--teachers", f"hf:{user / 'teacher'}", cwd=user), "fit_data", "'linear'",
                   "learns nothing")


def test_a_nan_loss_is_the_projects_error_naming_the_step(user):
    line = assert_refused(run_cli("distill", "--ce-only", "--student", STUDENT, "--data", user / "train.txt",
                                  "--seq-bytes", "128", "--batch-size", "2", "--steps", "5", "--warmup-steps", "0",
                                  "--lr", "1e30", "--quiet", "--out", user / "runs/nan", cwd=user), "loss is")
    assert " at step " in line and "--lr" in line and "checkpoint" in line


# ---------------------------------------------------------------------------------------------------------
# plugins fail alone


@pytest.fixture
def broken_plugin(tmp_path):
    """An installed distribution (a real .dist-info on the path) whose teacher module does not import, next to a
    working one."""
    site = tmp_path / "site"
    info = site / "mergekd_broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mergekd-broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [mergekd.teachers]
        broken-teacher = mergekd_no_such_module:spec
        """))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_broken_plugin_is_one_row_and_other_names_keep_working(user, broken_plugin):
    listed = run_cli("teachers", "list", cwd=user, env={**broken_plugin, "COLUMNS": "250"})
    assert listed.returncode == 0, listed.stderr
    assert "broken-teacher" in listed.stdout and "smollm2-135m" in listed.stdout and "gemma3-270m" in listed.stdout
    assert "mergekd_no_such_module" in listed.stdout
    assert_refused(run_cli("teachers", "show", "smolm2-135m", cwd=user, env=broken_plugin),
                   "Did you mean 'smollm2-135m'")
    assert_refused(run_cli("teachers", "show", "broken-teacher", cwd=user, env=broken_plugin),
                   "broken-teacher", "failed to load", "mergekd_no_such_module")
    shown = run_cli("teachers", "show", "smollm2-135m", cwd=user, env=broken_plugin)
    assert shown.returncode == 0, shown.stderr


# ---------------------------------------------------------------------------------------------------------
# documented forms work


def test_yaml_mix_mapping_and_registry_byte_heads(tmp_path):
    from mergekd.distill.config import load_config
    from mergekd.student.byte_head import BYTE_HEADS, ParallelByteHead

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(textwrap.dedent(f"""\
        teachers: [gpt2]
        student: "{STUDENT}"
        data: train.txt
        out: runs/yaml
        mix: {{name: product, weights: [1, 2]}}
        byte_head: bld
        """))
    cfg = load_config(cfg_file, {})
    assert cfg.mix == {"name": "product", "weights": [1, 2]} and cfg.byte_head == "parallel"

    class WideHead(ParallelByteHead):
        pass

    BYTE_HEADS.add("wide-test-head", WideHead)
    try:
        assert load_config(cfg_file, {"byte_head": "wide_test_head"}).byte_head == "wide-test-head"
    finally:
        BYTE_HEADS._items.pop("wide-test-head")


def test_eval_takes_a_student_spec(tmp_path):
    (tmp_path / "held.txt").write_text(TEXT, encoding="utf-8")
    result = run_cli("eval", "--model", STUDENT, "--data", tmp_path / "held.txt", "--json", tmp_path / "e.json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bits/byte" in result.stdout and (tmp_path / "e.json").is_file()


def test_lora_extra_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(req.startswith("peft") for req in extras["lora"])


def test_normalize_writes_an_nfc_copy_and_never_touches_the_input(tmp_path):
    import json
    import unicodedata

    src = tmp_path / "decomposed.jsonl"
    src.write_text(json.dumps({"text": "cafe\u0301 au lait", "meta": {"n": 1}}) + "\n" + json.dumps({"text": "plain"})
                   + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    done = run_cli("normalize", "--data", src, "--out", tmp_path / "nfc.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 records changed" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "nfc.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"text": unicodedata.normalize("NFC", "cafe\u0301 au lait"), "meta": {"n": 1}}
    assert snapshot(tmp_path) == {**before, "nfc.jsonl": snapshot(tmp_path)["nfc.jsonl"]}
    again = snapshot(tmp_path)
    assert_refused(run_cli("normalize", "--data", src, "--out", tmp_path / "nfc.jsonl", cwd=tmp_path),
                   "nfc.jsonl exists", "--force")
    assert_refused(run_cli("normalize", "--data", src, "--out", src, cwd=tmp_path), "is the input file")
    assert_refused(run_cli("normalize", "--data", src, "--out", tmp_path / "x", "--form", "NFX", cwd=tmp_path),
                   "'NFX'")
    assert snapshot(tmp_path) == again
