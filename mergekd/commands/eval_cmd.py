"""``mergekd eval``: bits per byte of a model from its own token NLL."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field

from .options import (model_options, refuse_unused, runtime_overrides, teacher_runtime_options, validated,
                      with_options)


class EvalOptions(BaseModel):
    """``mergekd eval``'s own options (the teacher-runtime group is shared: :data:`.options.TEACHER_RUNTIME`).

    Bounds are left to the library (``chunk_bytes`` is checked by the one text chunker), so its messages stay."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model folder (e.g. OUT/final), a student spec (new:, hf:, gguf:) or a "
                                   "registered teacher name")
    data: str = Field(description="held-out data spec (a .txt/.jsonl/.parquet/... file, a glob of shards, a "
                                  "save_to_disk folder or hub:id; see docs/data.md)")
    json_out: Path | None = Field(None, description="write {'bpb', 'bytes', 'tokens'} here")
    chunk_bytes: int = Field(1024, description="texts are scored in independent chunks of this many bytes")
    max_bytes: int | None = Field(None, description="score only the first N bytes of the data")


@with_options(model_options(EvalOptions, flags={"json_out": ("--json",)}), teacher_runtime_options())
def eval_command(**options) -> None:
    """Bits per byte from the model's own token NLL (comparable across tokenizers).

    The teacher-runtime options apply when --model is a registered teacher (its device, window, batch); --teachers
    and --byte-rule are refused here (this scores the model's own tokens: use `mergekd score` for teachers' byte-rule
    BPB).

    Example: mergekd eval --model runs/demo/final --data heldout.txt
    """
    from rich.progress import Progress

    from ..evaluate import evaluate_file
    from ..io import write_json

    opts = validated(EvalOptions, options, "eval")
    refuse_unused(options, ("teachers", "byte_rule"), "eval", "it scores the model's own tokens; use `mergekd "
                  "score --teachers ...` for byte-rule BPB")
    lm, tok = _load_eval_model(opts.model, options)
    with Progress(transient=True) as bar:
        task = bar.add_task("eval", total=None)
        result = evaluate_file(lm, tok, opts.data, chunk_bytes=opts.chunk_bytes, limit_bytes=opts.max_bytes,
                               progress=lambda n: bar.advance(task, n))
    typer.echo(f"{opts.model}: {result['bpb']:.4f} bits/byte over {result['bytes']} bytes ({result['tokens']} "
               "tokens)")
    if opts.json_out is not None:
        write_json(opts.json_out, {"model": opts.model, **result})


def _load_eval_model(model: str, options: dict):
    """``--model``: an exported folder, a student spec (``new:``, ``hf:``, ``gguf:``) or a teacher spec.

    Student grammar first: ``new:llama?...`` is never a teacher, and ``hf:``/``gguf:`` load the same way either
    way; anything else is a registered teacher name (unknown names get the teacher registry's suggestions)."""
    from ..student import load_student

    if Path(model).is_dir() or model.startswith(("new:", "hf:", "gguf:")):
        refuse_unused(options, ("teacher_device", "teacher_max_length", "teacher_batch_size"), "eval",
                      f"--model {model} is a student, not a registered teacher")
        return load_student(model if not Path(model).is_dir() else f"hf:{model}")
    from ..teachers import load_teacher

    teacher = load_teacher(model, overrides=runtime_overrides(options))
    return teacher.model, teacher.tokenizer
