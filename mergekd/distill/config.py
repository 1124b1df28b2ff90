"""DistillConfig: every knob of ``mergekd distill``, validated once at the edge (YAML file and CLI flags).

Defaults and their sources: λ_b = 1 and λ_kl = 0.1 as reported (second-hand) for Byte-Level Distillation
(arXiv 2604.07466); K = 10 byte offsets (BLD); forward KL at temperature 1 (BLD). CE-only training is the same
config with ``byte_ce_weight = 0`` and ``kl_weight = 0`` and no teachers (``--ce-only``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teachers: list[str] = Field(default_factory=list, description="teacher specs; empty = CE-only training")
    student: str = Field(..., description="student spec: new:llama?tokenizer=gpt2&layers=4, hf:PATH, gguf:PATH")
    data: Path
    out: Path
    eval_data: Path | None = None
    mix: str = "linear"
    fit_data: Path | None = None
    cache: Path | None = None

    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1, description="global batch (texts per optimizer step, all processes)")
    grad_accum: int = Field(1, ge=1)
    seq_bytes: int = Field(512, ge=16, description="bytes per training text chunk")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0

    byte_head: Literal["parallel", "recurrent"] = "parallel"
    byte_offsets: int = Field(10, ge=1, le=64)
    token_ce_weight: float = Field(1.0, ge=0)
    byte_ce_weight: float = Field(1.0, ge=0)
    kl_weight: float = Field(0.1, ge=0)
    kl_loss: str = "forward-kl"
    temperature: float = Field(1.0, gt=0)

    save_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    device: str = "auto"
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    teacher_placement: Literal["device", "swap"] = "device"
    teacher_max_length: int = Field(1024, ge=16)
    lora_rank: int = Field(0, ge=0, description="0 = full fine-tuning; >0 trains LoRA adapters (needs peft)")
    log_every: int = Field(1, ge=1)

    @field_validator("teachers", mode="before")
    @classmethod
    def _split_teachers(cls, v):
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.teachers and self.byte_ce_weight == 0 and self.kl_weight == 0:
            raise ValueError("teachers are given but byte_ce_weight and kl_weight are both 0: the teachers would "
                             "be ignored; set kl_weight > 0 or drop the teachers")
        if not self.teachers and self.cache is None and self.kl_weight > 0:
            # CE-only runs: the KL term has nothing to match
            self.kl_weight = 0.0
        from ..losses import LOSSES

        LOSSES.get(self.kl_loss)  # unknown name → UnknownNameError listing close matches
        return self

    # ------------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of everything that changes the result; a resumed run must match it (steps may grow)."""
        fields = self.model_dump(mode="json", exclude={"steps", "save_every", "keep_checkpoints", "log_every",
                                                       "out", "device", "eval_data"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: Path | None, overrides: dict) -> DistillConfig:
    """YAML file (optional) + CLI overrides (None values ignored) → validated DistillConfig.

    Errors name the field and say what is wrong, e.g. ``steps: Input should be greater than or equal to 1``.
    """
    data: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return DistillConfig(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            lines.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid distillation config — " + "; ".join(lines)) from None
