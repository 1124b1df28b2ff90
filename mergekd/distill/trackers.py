"""Experiment trackers for ``mergekd distill`` (``--report-to tensorboard|wandb|trackio|none``), on accelerate's.

Why accelerate's trackers: the loop already runs on an ``Accelerator``, whose trackers log from the main process
only and speak TensorBoard, W&B and Trackio, as HF Trainer / TRL's ``report_to`` do. This module adds what
accelerate leaves to the caller:

- names checked at config validation (typos and missing packages are errors there: accelerate itself drops a
  tracker whose package is missing with only a debug log line, and the run would silently log nothing);
- TensorBoard files under ``OUT/tensorboard/RUN_NAME/`` (accelerate's default is ``OUT/RUN_NAME``);
- a config TensorBoard's hparams accept (int/float/str/bool only: lists, dicts, None and Paths are converted);
- metrics records reduced to their numbers (``metrics.jsonl`` rows also hold bools and strings);
- on resume, TensorBoard hides the steps a killed run logged past its last checkpoint (``purge_step``).

Only the standard library is imported at module level: ``check_report_to`` runs while the config is validated,
before torch or accelerate load.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import numbers
import os
from pathlib import Path

TRACKERS = ("tensorboard", "wandb", "trackio", "none")

# tracker → (importable modules, any one is enough; how to install)
_NEEDS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'mergekd[track]'"),
    "wandb": (("wandb",), "pip install wandb"),
    "trackio": (("trackio",), "pip install trackio"),
}

# metrics.jsonl keys go to the trackers as ``train/KEY`` (grouped like ``eval/bpb``); ``step`` is the x axis
TRAIN_PREFIX = "train/"


def check_report_to(values) -> list[str]:
    """The trackers to start, in order and deduplicated; [] for none. Accepts a list (each item may itself be
    comma-separated, as ``--report-to tensorboard,wandb`` gives), a single string, or None.

    Refuses unknown names (with a did-you-mean), ``none`` together with a tracker (contradictory), and a tracker
    whose package is not importable (checked with ``find_spec``, which imports nothing)."""
    from ..errors import ConfigError

    if values is None:
        values = []
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for item in values:
        if not isinstance(item, str):
            raise ConfigError(f"report_to: expected tracker names, got {item!r}; valid: {', '.join(TRACKERS)}")
        for name in item.split(","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"report_to: unknown tracker {name!r}.{hint} Valid: {', '.join(TRACKERS)} "
                              "(several allowed, e.g. --report-to tensorboard,wandb)")
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"report_to: 'none' cannot be combined with other trackers "
                              f"({', '.join(n for n in names if n != 'none')}); drop one of them")
        return []
    for name in names:
        modules, install = _NEEDS[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(f"report_to: {name} needs the {modules[0]} package: {install}")
    return names


def accelerator_kwargs(report_to: list[str], out: Path) -> dict:
    """Keyword arguments for ``Accelerator(...)``: the trackers and a project under ``out`` whose logging folder is
    ``out/tensorboard`` (TensorBoard then writes ``out/tensorboard/RUN_NAME/``). {} when no tracker is asked for,
    so runs without trackers build the same Accelerator as before."""
    if not report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(out)
    return {"log_with": list(report_to),
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard"))}


def tracker_config(config: dict) -> dict:
    """``config`` with values every tracker accepts: int/float/str/bool stay, None → "none", Paths → str,
    lists/tuples/dicts → JSON text (TensorBoard's hparams refuse them), anything else → str."""
    flat = {}
    for key, value in config.items():
        if value is None:
            flat[str(key)] = "none"
        elif isinstance(value, (bool, int, float, str)):
            flat[str(key)] = value
        elif isinstance(value, (list, tuple, dict)):
            flat[str(key)] = json.dumps(value, default=str, sort_keys=True)
        else:
            flat[str(key)] = str(value)
    return flat


def start_trackers(accelerator, report_to: list[str], out: Path, run_name: str, config: dict, *,
                   start_step: int = 0) -> None:
    """Start the trackers on the main process (accelerate's ``init_trackers`` is main-process only) and store the
    config as hyperparameters. ``run_name`` is the TensorBoard subfolder and the W&B / Trackio project.

    ``start_step``: the step the run resumes from (0 for a fresh run). TensorBoard hides events at steps past it,
    which a killed run logged after its last checkpoint and which the resumed run logs again (``purge_step``;
    records carry 1-based steps, so the first new one is ``start_step + 1``). W&B is pointed at ``out`` unless
    ``WANDB_DIR`` says otherwise (its default is ``./wandb`` in the working directory)."""
    if not report_to:
        return
    active = {getattr(t, "value", str(t)) for t in accelerator.log_with}
    missing = [name for name in report_to if name not in active]
    if missing:  # accelerate drops unavailable trackers silently; check_report_to should have caught this
        raise RuntimeError(f"report_to: accelerate did not start {', '.join(missing)} (package not importable, "
                           "or the Accelerator was built without accelerator_kwargs(report_to, out))")
    init_kwargs: dict = {"tensorboard": {"purge_step": int(start_step) + 1}}
    if "WANDB_DIR" not in os.environ:
        init_kwargs["wandb"] = {"dir": str(out)}
    accelerator.init_trackers(project_name=run_name, config=tracker_config(config), init_kwargs=init_kwargs)


def _numbers(values: dict, prefix: str = "") -> dict[str, int | float]:
    """The numeric entries of ``values`` (bools → 0/1, one-element tensors → their number), with ``prefix``; nested
    dicts (e.g. per-teacher mixer weights) become ``prefix + key/inner``; strings, None and lists are dropped."""
    out: dict[str, int | float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, name + "/"))
            continue
        if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, numbers.Real):
            out[name] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return out


def log_metrics(accelerator, record: dict, step: int) -> None:
    """Log the numbers of one ``metrics.jsonl`` record (loss, each term, lr, bytes_per_s, tokens, on_policy as 0/1,
    sample_bytes, ...) as ``train/KEY`` at ``step``; the record's own ``step`` is the x axis, not a series.
    A no-op without trackers (and on processes other than the main one, which hold none)."""
    if not accelerator.trackers:
        return
    values = _numbers({k: v for k, v in record.items() if k != "step"}, TRAIN_PREFIX)
    if values:
        accelerator.log(values, step=int(step))


def log_eval(accelerator, values: dict, step: int) -> None:
    """Log evaluation numbers under the keys given (e.g. ``{"eval/bpb": 3.12}``); non-finite values are kept
    (a NaN BPB is a result worth seeing), non-numbers dropped."""
    if not accelerator.trackers:
        return
    values = _numbers(values)
    if values:
        accelerator.log(values, step=int(step))


def finish_trackers(accelerator) -> None:
    """Close every tracker (flush TensorBoard files, end the W&B / Trackio run); safe to call twice.

    Not ``accelerator.end_training()``: that also destroys the process group, and ``distill`` may be called again
    in the same process (ablation sweeps, tests) under torchrun."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


__all__ = ["TRACKERS", "TRAIN_PREFIX", "accelerator_kwargs", "check_report_to", "finish_trackers", "log_eval",
           "log_metrics", "start_trackers", "tracker_config"]
