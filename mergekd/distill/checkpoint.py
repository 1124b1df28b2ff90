"""Atomic, resumable checkpoints under ``OUT/checkpoints``.

Layout: ``step-000050/`` (accelerate state: model+head, optimizer, RNG of every process; our ``meta.json``
with step, scheduler and config fingerprint; the mixer's state) and ``latest`` (a one-line pointer file).
A checkpoint is built in a temporary folder and renamed into place, then ``latest`` is replaced atomically,
so a kill at any instant leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..io import write_atomic
from ..errors import ConfigError, MergekdError


def checkpoints_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    pointer = checkpoints_dir(out) / "latest"
    if not pointer.is_file():
        return None
    folder = checkpoints_dir(out) / pointer.read_text().strip()
    if not (folder / "meta.json").is_file():
        raise MergekdError(f"checkpoint pointer {pointer} names {folder}, which is missing or incomplete; "
                           "delete the pointer to restart from the previous checkpoint or from scratch")
    return folder


def read_meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def check_resumable(folder: Path, fingerprint: str) -> dict:
    meta = read_meta(folder)
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError(f"{folder} was written by a run with a different configuration (fingerprint "
                          f"{meta.get('fingerprint')} ≠ {fingerprint}); use a new --out or the same settings "
                          "(only steps, save_every, log_every, device and eval_data may change on resume)")
    return meta


class _TiedWeightsNotice(logging.Filter):
    """Drop accelerate's "Removed shared tensor ... while saving" warning for tied input/output embeddings.

    Why: safetensors stores a tied tensor once and accelerate warns on every checkpoint; the tie is restored on
    load (the SIGKILL-resume test checks bit-equal weights), so the warning only alarms users mid-run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in str(record.getMessage())


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


def save_checkpoint(accelerator, out: Path, step: int, meta: dict, extra_writers=(), keep: int = 2) -> Path:
    """Save (all processes call this). Returns the checkpoint folder."""
    root = checkpoints_dir(out)
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank has written its files (RNG states) before the folder is renamed
    if accelerator.is_main_process:
        for writer in extra_writers:
            writer(tmp)
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomic(root / "latest", name)
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
