"""``mergekd distill``: its options are the fields of :class:`~mergekd.distill.config.DistillConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .options import model_options, with_options


class DistillRunOptions(BaseModel):
    """The options of ``mergekd distill`` that are not config fields: where the config comes from and how the run
    is shown (so they never reach the config or its fingerprint)."""

    model_config = ConfigDict(extra="forbid")

    config: Path | None = Field(None, description="YAML config (flags override it)")
    ce_only: bool = Field(False, description="baseline: no teachers, token CE only")
    quiet: bool = Field(False, description="no progress bar")


_DISTILL_FLAGS = {"teachers": ("--teachers",), "objective": ("--term",), "on_policy": ("--on-policy",)}
_DISTILL_META = {"objective": "NAME[:k=v,...]", "on_policy": "FRACTION"}


def _panels() -> dict[str, str]:
    """Each option's --help panel: the title of its config section (mergekd.distill.config.SECTIONS)."""
    from ..distill.config import SECTIONS

    return {name: title for model, title in SECTIONS.values() for name in model.model_fields}


def _distill_options() -> list:
    """``--config`` first, then every config field grouped by section, then ``--ce-only`` and ``--quiet``."""
    from ..distill.config import DistillConfig

    head = model_options(DistillRunOptions, flags={"config": ("--config", "-c")}, exclude=("ce_only", "quiet"))
    panels = _panels()
    fields = model_options(DistillConfig, flags=_DISTILL_FLAGS, metavars=_DISTILL_META, panels=panels,
                           annotations={"objective": Optional[list[str]]},  # --term is repeatable
                           order=list(panels))
    tail = model_options(DistillRunOptions, exclude=("config",))
    return head + fields + tail


@with_options(_distill_options())
def distill_command(**options) -> None:
    """Distil teachers into a student; rerunning the same command on the same --out resumes.

    Every option is a field of the run's config (YAML keys are the option names with '_'); --help shows each
    field's description, choices and config default.

    Example: mergekd distill --teachers smollm2-135m,gemma3-270m --student "new:llama?tokenizer=gpt2" \\
             --data train.txt --steps 200 --out runs/demo

    On-policy (half the batches sampled by the student, reverse KL as GKD recommends):
             mergekd distill ... --on-policy 0.5 --kl-loss reverse-kl --max-new-tokens 64
    """
    config, ce_only, quiet = options.pop("config"), options.pop("ce_only"), options.pop("quiet")
    overrides = dict(options)
    overrides["objective"] = list(overrides["objective"]) if overrides.get("objective") else None
    from ..distill import distill, load_config

    if ce_only:
        clash = [f"--{k.replace('_', '-')}" for k in ("teachers", "cache", "kl_weight", "trie_kl_weight", "objective",
                                                     "byte_ce_weight", "mix", "fit_data", "on_policy")
                 if overrides.get(k) not in (None, 0, 0.0)]
        if clash:
            raise ConfigError(f"--ce-only trains the token CE alone, but {', '.join(clash)} asks for teachers or "
                              "teacher terms; drop --ce-only or those flags")
        overrides.update(teachers=[], byte_ce_weight=0.0, kl_weight=0.0, trie_kl_weight=0.0, cache=None)
    cfg = load_config(config, overrides)
    final = distill(cfg, show_progress=not quiet)
    from accelerate import PartialState

    if PartialState().is_main_process:  # one line, not one per process of a distributed launch
        typer.echo(f"exported student: {final}")
