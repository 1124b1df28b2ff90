"""Experiment trackers (``--report-to``): name checks, and a real TensorBoard run read back from its event files."""

from __future__ import annotations

import importlib.util
import math
import struct
import time
from pathlib import Path

import pytest
import yaml

from mergekd.distill.trackers import (
    TRACKERS,
    accelerator_kwargs,
    check_report_to,
    finish_trackers,
    log_eval,
    log_metrics,
    start_trackers,
    tracker_config,
)
from mergekd.errors import ConfigError

# --- check_report_to --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    (["tensorboard"], ["tensorboard"]),
    ("tensorboard", ["tensorboard"]),
    (["TensorBoard, tensorboard", " TENSORBOARD "], ["tensorboard"]),  # comma lists, case, blanks, duplicates
    (["tensorboard,"], ["tensorboard"]),
    ([], []),
    (None, []),
    (["none"], []),
    (["None", "none"], []),
])
def test_check_report_to_normalises(given, expected):
    assert check_report_to(given) == expected


def test_unknown_tracker_names_field_value_valid_names_and_close_match():
    with pytest.raises(ValueError) as err:
        check_report_to(["tensorbord"])
    message = str(err.value)
    assert isinstance(err.value, ConfigError)
    assert message.startswith("report_to: ")
    assert "'tensorbord'" in message and "Did you mean 'tensorboard'?" in message
    assert all(name in message for name in TRACKERS)


def test_unknown_tracker_without_close_match_has_no_guess():
    with pytest.raises(ConfigError) as err:
        check_report_to(["tensorboard", "mlflow"])  # accelerate has it, mergekd does not offer it
    message = str(err.value)
    assert "'mlflow'" in message and "Did you mean" not in message
    assert all(name in message for name in TRACKERS)


@pytest.mark.parametrize("given", [["none", "tensorboard"], ["tensorboard,none"], ["wandb", "none"]])
def test_none_with_a_tracker_is_refused(given):
    with pytest.raises(ConfigError, match=r"^report_to: 'none' cannot be combined"):
        check_report_to(given)


def test_non_string_entry_is_refused():
    with pytest.raises(ConfigError, match="report_to"):
        check_report_to([3])


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_tracker_needs_its_package(name):
    """Real environment, no patching: the dev venv installs neither wandb nor trackio; if one is installed, it
    must be accepted instead."""
    if importlib.util.find_spec(name) is not None:
        assert check_report_to(["tensorboard", name]) == ["tensorboard", name]
        return
    with pytest.raises(ConfigError) as err:
        check_report_to(["tensorboard", name])
    assert str(err.value) == f"report_to: {name} needs the {name} package: pip install {name}"


def test_tensorboard_missing_names_the_extra(monkeypatch):
    """The environment is patched (tensorboard is a dev dependency, so it is installed): find_spec answers None
    for tensorboard and tensorboardX only, as it would where neither is installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError) as err:
        check_report_to(["tensorboard"])
    assert str(err.value) == "report_to: tensorboard needs the tensorboard package: pip install 'mergekd[track]'"


# --- config and kwargs ------------------------------------------------------------------------------------------

def test_accelerator_kwargs(tmp_path):
    assert accelerator_kwargs([], tmp_path) == {}
    kwargs = accelerator_kwargs(["tensorboard"], tmp_path)
    assert kwargs["log_with"] == ["tensorboard"]
    assert Path(kwargs["project_config"].project_dir) == tmp_path
    assert Path(kwargs["project_config"].logging_dir) == tmp_path / "tensorboard"


CONFIG = {"lr": 3e-4, "steps": 3, "lora": False, "name": "run", "cache": None, "data": Path("/data/train.txt"),
          "teachers": ["hf:a", "hf:b"], "objective": [{"term": "token_ce"}, {"term": "trie_kl", "weight": 3}],
          "mix": {"name": "linear", "weights": [0.5, 0.5]}}

FLAT = {"lr": 3e-4, "steps": 3, "lora": False, "name": "run", "cache": "none", "data": "/data/train.txt",
        "teachers": '["hf:a", "hf:b"]',
        "objective": '[{"term": "token_ce"}, {"term": "trie_kl", "weight": 3}]',
        "mix": '{"name": "linear", "weights": [0.5, 0.5]}'}


def test_tracker_config_converts_what_hparams_refuse():
    flat = tracker_config(CONFIG)
    assert flat == FLAT
    assert {type(v) for v in flat.values()} <= {int, float, str, bool}


# --- end to end: a real Accelerator writing TensorBoard event files --------------------------------------------

@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one process-wide state; clear it around each Accelerator built here (as in
    tests/test_scale_paths.py), so no setting leaks into other tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _accelerator(report_to, out):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=True, **accelerator_kwargs(report_to, out))


def _f32(x: float) -> float:
    """TensorBoard stores scalars as float32."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {tag: points for tag, points in scalars.items() if points}  # a purge can leave a tag with no points


RECORDS = [
    {"step": 1, "lr": 1e-4, "loss": 5.25, "token_ce": 5.0, "trie_kl": 0.083333, "tokens": 812.0,
     "bytes_per_s": 1234.5, "on_policy": False},
    {"step": 2, "lr": 2e-4, "loss": 4.5, "token_ce": 4.25, "trie_kl": 0.0625, "tokens": 790.0,
     "bytes_per_s": 1300.0, "on_policy": True, "sample_bytes": 61.5, "sample_trimmed_bytes": 2,
     "mixer": {"weights": {"a": 0.25, "b": 0.75}, "name": "linear"}, "note": "text is dropped", "missing": None,
     "per_teacher": [1.0, 2.0]},
    {"step": 3, "lr": 3e-4, "loss": 4.0, "token_ce": 3.875, "trie_kl": float("nan"), "tokens": 801.0,
     "bytes_per_s": 1299.9, "on_policy": False},
]


def _expected(records) -> dict[str, list[tuple[int, float]]]:
    """What log_metrics must write: every number as train/KEY (bools as 0/1, nested dicts as KEY/INNER), the
    record's step as the step; strings, None, lists and the step itself are no series."""
    expected: dict[str, list[tuple[int, float]]] = {}

    def add(prefix, values, step):
        for key, value in values.items():
            if isinstance(value, dict):
                add(f"{prefix}{key}/", value, step)
            elif isinstance(value, (bool, int, float)) and key != "step":
                expected.setdefault(prefix + key, []).append((step, float(value)))

    for record in records:
        add("train/", record, record["step"])
    return expected


def _same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        for (_, value), (_, want) in zip(got[tag], points):
            assert (math.isnan(value) and math.isnan(want)) or value == _f32(want), (tag, value, want)


def test_tensorboard_run_reads_back_exactly(tmp_path, fresh_accelerate):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    report_to = check_report_to(["tensorboard"])
    accelerator = _accelerator(report_to, tmp_path)
    start_trackers(accelerator, report_to, tmp_path, "demo", CONFIG)
    for record in RECORDS:
        log_metrics(accelerator, record, record["step"])
    log_eval(accelerator, {"eval/bpb": 3.1196, "eval/label": "dropped"}, 3)
    finish_trackers(accelerator)
    finish_trackers(accelerator)  # twice is harmless
    assert accelerator.trackers == []

    run_dir = tmp_path / "tensorboard" / "demo"
    assert list(run_dir.glob("events.out.tfevents.*")), sorted(p.name for p in tmp_path.rglob("*"))
    assert not [p for p in tmp_path.iterdir() if p.name != "tensorboard"]  # nothing else lands in OUT
    expected = _expected(RECORDS)
    assert "train/mixer/weights/a" in expected and "train/on_policy" in expected  # the cases the records cover
    expected["eval/bpb"] = [(3, 3.1196)]
    _same(_scalars(run_dir), expected)
    assert _scalars(run_dir)["train/on_policy"] == [(1, 0.0), (2, 1.0), (3, 0.0)]

    # hyperparameters: accelerate's hparams.yml and TensorBoard's hparams plugin hold the converted config
    [hparams_yml] = run_dir.rglob("hparams.yml")
    assert yaml.safe_load(hparams_yml.read_text()) == FLAT
    hparams = {}
    for folder in (p for p in run_dir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams").values()
        except KeyError:  # accelerate's hparams.yml folder, or the scalars' own
            contents = []
        for content in contents:
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
    # TensorBoard keeps numbers (bools included, as torch writes them) as float64
    assert hparams == {k: v if isinstance(v, str) else float(v) for k, v in FLAT.items()}


def test_no_trackers_logs_nothing(tmp_path, fresh_accelerate):
    accelerator = _accelerator([], tmp_path)
    start_trackers(accelerator, [], tmp_path, "demo", CONFIG)
    log_metrics(accelerator, RECORDS[0], 1)
    log_eval(accelerator, {"eval/bpb": 3.0}, 1)
    finish_trackers(accelerator)
    assert list(tmp_path.iterdir()) == []


def test_accelerator_without_tracker_kwargs_is_refused(tmp_path, fresh_accelerate):
    """start_trackers refuses an Accelerator that was not given the trackers (accelerate would log nothing)."""
    accelerator = _accelerator([], tmp_path)
    with pytest.raises(RuntimeError, match="report_to: accelerate did not start tensorboard"):
        start_trackers(accelerator, ["tensorboard"], tmp_path, "demo", CONFIG)


def test_resume_hides_steps_logged_past_the_checkpoint(tmp_path, fresh_accelerate):
    """A run killed after step 3 with its checkpoint at step 2 resumes at step 2 and logs step 3 again: TensorBoard
    shows the resumed step 3 only, and nothing else the killed run logged past step 2 (sample_bytes here)."""
    first = _accelerator(["tensorboard"], tmp_path)
    start_trackers(first, ["tensorboard"], tmp_path, "demo", {"steps": 4})
    for step, loss in [(1, 5.0), (2, 4.5), (3, 4.0)]:
        log_metrics(first, {"step": step, "loss": loss, **({"sample_bytes": 60.0} if step == 3 else {})}, step)
    finish_trackers(first)
    time.sleep(1.1)  # event file names start with the second they were created: the resumed file sorts after

    resumed = _accelerator(["tensorboard"], tmp_path)
    start_trackers(resumed, ["tensorboard"], tmp_path, "demo", {"steps": 4}, start_step=2)
    for step, loss in [(3, 3.5), (4, 3.25)]:
        log_metrics(resumed, {"step": step, "loss": loss}, step)
    finish_trackers(resumed)

    run_dir = tmp_path / "tensorboard" / "demo"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert _scalars(run_dir) == {"train/loss": [(1, 5.0), (2, 4.5), (3, 3.5), (4, 3.25)]}


def test_distill_report_to_tensorboard_logs_every_metrics_line_and_eval(tmp_path, fresh_accelerate):
    """`mergekd distill --report-to tensorboard`: each metrics.jsonl line's numbers are in OUT/tensorboard/ at its
    step (loss, each term, lr, bytes/s), and the export's held-out BPB as eval/bpb."""
    import json

    from mergekd.assets import read_body
    from mergekd.distill import distill, load_config

    (tmp_path / "t.txt").write_text(read_body("botchan")[:3000])
    out = tmp_path / "run"
    cfg = load_config(None, {"student": "new:llama?tokenizer=gpt2&layers=1&hidden=32&heads=2&ctx=256",
                             "data": str(tmp_path / "t.txt"), "eval_data": str(tmp_path / "t.txt"),
                             "out": str(out), "steps": 3, "batch_size": 2, "seq_bytes": 128, "device": "cpu",
                             "report_to": "tensorboard"})
    distill(cfg, show_progress=False)
    got = _scalars(out / "tensorboard" / "run")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "token_ce", "lr", "bytes_per_s"):
        assert got[f"train/{key}"] == [(r["step"], pytest.approx(_f32(r[key]), rel=1e-6)) for r in lines]
    bpb = json.loads((out / "final" / "eval.json").read_text())["bpb"]
    assert got["eval/bpb"] == [(3, pytest.approx(_f32(bpb), rel=1e-6))]
