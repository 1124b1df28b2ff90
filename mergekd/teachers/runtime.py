"""The teacher-runtime options shared by every command that runs teachers, defined once.

Why here: the CLI group (:mod:`mergekd.commands.options`) and the distillation config
(:class:`~mergekd.distill.config.DistillConfig`) take these fields from this one model, so a description, a bound
or a default cannot drift between commands.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class TeacherRuntime(BaseModel):
    """How teachers run, shared by score, cache, distill, fidelity, eval and demo (a spec's own ``?options``
    win over these)."""

    teachers: str | None = Field(None, description="comma-separated teacher specs, e.g. smollm2-135m,gemma3-270m "
                                                   "(registered names, hf:PATH_OR_ID, gguf:FILE; options after ?)")
    teacher_device: str | None = Field(None, description="device of the teachers' forward passes: cpu, cuda, "
                                                         "cuda:N, mps")
    teacher_max_length: int | None = Field(None, ge=16, description="teacher window in tokens (default: the "
                                                                    "teacher's own, min(model positions, 1024))")
    teacher_batch_size: int | None = Field(None, ge=1, description="teacher windows per forward pass (default: as "
                                                                   "many as keep the logits under 1 GiB)")
    byte_rule: str | None = Field(None, description="every teacher's token → byte rule: canonical (fast, "
                                                    "default) or exact:K=8 (covering sum; short texts)")
