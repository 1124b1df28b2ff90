"""How to run a teacher (device, dtype, window length, batch size), validated once at the edge.

Why a separate model from *what* the teacher is (:class:`~mergekd.teachers.spec.TeacherSpec`): the same
registered teacher runs on a laptop CPU with short windows and on a GPU in bfloat16, and users change these on
the command line (``smollm2-135m?max_length=512&dtype=bfloat16``) without registering anything new.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping
from urllib.parse import parse_qsl

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

# Default window on CPU: long enough for a few KB of English per window, short enough that attention and the
# vocabulary projection stay cheap. A model with fewer positions uses its own limit.
DEFAULT_MAX_LENGTH = 1024
# A forward pass holds float32 logits [windows, max_length, vocab]: for Gemma-3 (262,144 ids) one 1024-token
# window is already 1 GiB. The default batch keeps that tensor under this budget, so memory holds one teacher
# plus one budget of logits, whatever the vocabulary.
LOGITS_BUDGET_BYTES = 1 << 30
MAX_AUTO_BATCH = 8


class TeacherOptions(BaseModel):
    """Runtime options of one teacher. Every field can be set in a spec string: ``NAME?field=value&...``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field("cpu", description="torch device for the forward passes: cpu, cuda, cuda:1, mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights/activations dtype; byte conversion always accumulates in float32/64")
    max_length: int | None = Field(
        None, ge=8, description=f"tokens per window; default min(model positions, {DEFAULT_MAX_LENGTH})")
    overlap: int | None = Field(None, ge=0, description="tokens of left context shared by windows; default half")
    batch_size: int | None = Field(
        None, ge=1, description="windows per forward pass; default: as many as keep the logits under "
                                f"{LOGITS_BUDGET_BYTES >> 20} MiB (1 for Gemma-3's 262k vocabulary, 8 at most)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) for hub ids")
    cache: bool = Field(True, description="GGUF teachers: keep a converted safetensors copy for fast reloads")
    byte_rule: str = Field(
        "canonical", description="token → byte rule: canonical (fast) or exact[:K=8;prune=0] (covering sum over "
                                 "tokenizations; ~0.1-0.3 s per byte on CPU, for short texts)")
    lossy_text: Literal["refuse", "mask"] = Field(
        "refuse", description="a text the tokenizer's NFC normaliser would change (not in NFC form): refuse "
                              "(error naming the fix) or mask (rows of the tokens it changes are masked and "
                              "counted in ByteTargets.masked_lossy; every other row stays exact)")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        try:
            torch.device(value)
        except (RuntimeError, TypeError):
            raise ValueError(f"{value!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
        return value

    @field_validator("byte_rule", mode="before")
    @classmethod
    def _known_rule(cls, value) -> str:
        from ..bytes.rule import parse_byte_rule

        try:
            return parse_byte_rule(value, "byte_rule").label()  # one spelling per rule: labels compare equal
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def rule(self):
        """The parsed :class:`~mergekd.bytes.rule.ByteRule`."""
        from ..bytes.rule import parse_byte_rule

        return parse_byte_rule(self.byte_rule)

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def check_device_available(self, where: str) -> None:
        """Refuse a device this machine does not have (or a cuda:N past its GPUs), before minutes are spent
        loading weights."""
        from ..devices import check_device

        try:
            check_device(self.device, "teacher_device")
        except ConfigError as exc:
            raise ConfigError(f"{where}: device={exc}") from None


OPTION_NAMES = tuple(TeacherOptions.model_fields)


def parse_option_query(query: str, where: str) -> dict[str, str]:
    """``max_length=512&dtype=bfloat16`` → dict; rejects unknown keys and malformed pairs by name."""
    if not query:
        return {}
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    if not pairs and query.strip():
        raise ConfigError(f"{where}: options {query!r} are not key=value pairs joined by '&'")
    for raw in query.split("&"):
        if raw and "=" not in raw:
            raise ConfigError(f"{where}: option {raw!r} has no value; write {raw}=VALUE "
                              f"(options: {', '.join(OPTION_NAMES)})")
    out = dict(pairs)
    unknown = sorted(set(out) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(OPTION_NAMES)}")
    return out


def build_options(where: str, *layers: Mapping[str, Any]) -> TeacherOptions:
    """Merge option layers (later wins: spec defaults, then command-line flags, then the spec string) and
    validate, turning pydantic's error into one line that names the field and the fix."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    try:
        return TeacherOptions.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "options"
            problems.append(f"{field}={err.get('input')!r}: {err['msg']}")
        raise ConfigError(f"{where}: invalid option {'; '.join(problems)}") from None
