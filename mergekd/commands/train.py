"""``mergekd distill`` and ``mergekd eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .options import plain, refuse_unused, require, runtime_overrides, teacher_runtime_options, with_options


_DISTILL_FLAGS = {"teachers": ("--teachers",), "objective": ("--term",), "on_policy": ("--on-policy",)}
_DISTILL_META = {"objective": "NAME[:k=v,...]", "on_policy": "FRACTION"}
def _panels() -> dict[str, str]:
    """Each option's --help panel: the title of its config section (mergekd.distill.config.SECTIONS)."""
    from ..distill.config import SECTIONS

    return {name: title for model, title in SECTIONS.values() for name in model.model_fields}


def _distill_options() -> list:
    from ..distill.config import DistillConfig
    from .options import model_options, plain

    head = [plain("config", None, "--config", "-c", help="YAML config (flags override it)", annotation=Optional[Path])]
    panels = _panels()
    fields = model_options(DistillConfig, flags=_DISTILL_FLAGS, metavars=_DISTILL_META, panels=panels,
                           annotations={"objective": Optional[list[str]]},  # --term is repeatable
                           order=list(panels))
    tail = [plain("ce_only", False, "--ce-only", help="baseline: no teachers, token CE only"),
            plain("quiet", False, "--quiet", help="no progress bar")]
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


@with_options(
    [plain("model", None, "--model", help="model folder (e.g. OUT/final), a student spec (new:, hf:, gguf:) or a "
                                          "registered teacher name", annotation=Optional[str]),
     plain("data", None, "--data", help="held-out data spec (a .txt/.jsonl/.parquet/... file, a glob of shards, a "
                                        "save_to_disk folder or hub:id; see docs/data.md)", annotation=Optional[str]),
     plain("json_out", None, "--json", help="write {'bpb', 'bytes', 'tokens'} here", annotation=Optional[Path]),
     plain("chunk_bytes", 1024, "--chunk-bytes", help="texts are scored in independent chunks of this many bytes"),
     plain("max_bytes", None, "--max-bytes", help="score only the first N bytes of the data",
           annotation=Optional[int])],
    teacher_runtime_options())
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

    model, data = require(options, "model", "data")
    refuse_unused(options, ("teachers", "byte_rule"), "eval", "it scores the model's own tokens; use `mergekd "
                  "score --teachers ...` for byte-rule BPB")
    lm, tok = _load_eval_model(model, options)
    with Progress(transient=True) as bar:
        task = bar.add_task("eval", total=None)
        result = evaluate_file(lm, tok, data, chunk_bytes=options["chunk_bytes"], limit_bytes=options["max_bytes"],
                               progress=lambda n: bar.advance(task, n))
    typer.echo(f"{model}: {result['bpb']:.4f} bits/byte over {result['bytes']} bytes ({result['tokens']} tokens)")
    if options["json_out"] is not None:
        write_json(options["json_out"], {"model": model, **result})


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
