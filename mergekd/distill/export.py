"""Export: the student alone, as a plain Hugging Face model folder with a model card. The byte head is dropped.

Written into a temporary sibling folder and renamed into place, so ``OUT/final`` is always complete.

Many processes: :func:`gather_student_state` runs on *every* process (``accelerator.get_state_dict`` is a
collective under FSDP and DeepSpeed ZeRO-3, and a no-op copy-free read under DDP); only the main process then calls
:func:`export_student` with the gathered weights. Where the live module does not hold its full weights (FSDP's
sharded DTensor parameters, ZeRO-3's empty placeholders) the export builds a plain CPU copy of the student from
those weights first, so merging LoRA adapters, the held-out evaluation and ``save_pretrained`` run on the main
process alone, with no collective the other processes would have to join.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

STUDENT_PREFIX = "student."  # StudentWithHead's student; the byte head ("head.") is not exported


def _teacher_names(cfg, signal) -> str:
    """The teachers as configured; a run from a byte cache without --teachers names the cache's teachers."""
    if cfg.teachers:
        return ", ".join(cfg.teachers)
    names = list(getattr(signal, "names", None) or [])
    if names:
        return ", ".join(names) + (f" (from the byte cache `{cfg.cache}`)" if cfg.cache else "")
    return "(none: CE-only training)"


def _model_card(cfg, signal, bpb: dict | None) -> str:
    mixer = getattr(signal, "mixer", None)
    describe = mixer.describe() if mixer is not None and hasattr(mixer, "describe") else None
    lines = [
        "---", "library_name: transformers", "tags: [mergekd, distillation, byte-level]", "---", "",
        "# Student distilled with mergekd", "",
        f"- teachers: {_teacher_names(cfg, signal)}",
        f"- mixer: {cfg.mix}" + (f" — {json.dumps(describe)}" if describe else ""),
        f"- student: `{cfg.student}`",
        f"- data: `{cfg.data}` in chunks of {cfg.seq_bytes} bytes",
        f"- steps: {cfg.steps} × batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}",
    ]
    from ..objective import describe_terms

    terms = cfg.terms()
    lines.append(f"- loss: {describe_terms(terms)}" + ("" if cfg.has_teacher_rows else " (baseline: no teachers)"))
    if any(t.needs_byte_head for t in terms):
        lines.append(f"- byte head: {cfg.byte_head}, K = {cfg.byte_offsets} byte offsets (dropped at export)")
    if getattr(cfg, "on_policy", 0) > 0:
        lines.append(f"- on-policy: {cfg.on_policy:g} of the batches sampled by the student ({cfg.max_new_tokens} new "
                     f"tokens, temperature {cfg.gen_temperature}, top-p {cfg.top_p}, {cfg.prompt_bytes}-byte prompts) "
                     "and trained on the teacher terms only on the sampled bytes")
    if bpb:
        lines.append(f"- held-out bits per byte on `{cfg.eval_data}`: {bpb['bpb']:.4f} ({bpb['bytes']} bytes)")
    lines += ["", "Load with `AutoModelForCausalLM.from_pretrained(folder)`; mergekd is not needed.", ""]
    return "\n".join(lines)


@contextmanager
def _hf_progress_bars(enabled: bool):
    """transformers' progress bars off inside the block when ``enabled`` is False, restored after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if not enabled and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was_on:
            hf_logging.enable_progress_bar()


def gather_student_state(accelerator, model) -> dict | None:
    """The student's full weights (keys as in ``student.state_dict()``), on the main process; None elsewhere.

    Every process must call this: under FSDP (accelerate gathers a full state dict on the main process) and
    ZeRO-3 the gathering is a collective, so a main-process-only call would hang. Under DDP or one process it
    returns the module's own tensors (no copy)."""
    full = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    return {k[len(STUDENT_PREFIX):]: v for k, v in full.items() if k.startswith(STUDENT_PREFIX)}


def _holds_full_weights(student, state: dict) -> bool:
    """The module's own tensors are the full weights in ``state`` (not FSDP shards or ZeRO-3 placeholders)."""
    from torch.distributed.tensor import DTensor

    own = student.state_dict()
    return own.keys() == state.keys() and all(
        not isinstance(t, DTensor) and t.shape == state[k].shape for k, t in own.items())


def _model_class(module):
    """The model's own class: FSDP2's ``fully_shard`` swaps a module's class for a generated ``FSDP<Name>``
    subclass, which must not be instantiated again."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # older torch: no FSDP2
        return type(module)
    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def plain_student(student, state: dict):
    """A plain CPU copy of ``student`` holding ``state`` (its full weights, keys as in ``student.state_dict()``):
    the same model class and config, and for a LoRA (peft) student the same adapter config, so the adapters can
    be merged. The tensors in ``state`` are used as they are (dtype kept, no copy)."""
    peft_configs = getattr(student, "peft_config", None)
    base = student.get_base_model() if peft_configs else student
    plain = _model_class(base)(copy.deepcopy(base.config))
    if peft_configs:
        from peft import get_peft_model

        plain = get_peft_model(plain, copy.deepcopy(peft_configs[student.active_adapter]))
    result = plain.load_state_dict(state, strict=False, assign=True)
    (plain.get_base_model() if peft_configs else plain).tie_weights()  # assign=True replaced tied tensors one by one
    tensors = plain.state_dict(keep_vars=True)
    loaded = {id(tensors[k]) for k in state if k in tensors}
    missing = [k for k in result.missing_keys if id(tensors[k]) not in loaded]  # a tied copy may be left out
    if missing or result.unexpected_keys:
        raise RuntimeError(f"export: the gathered weights do not fit the student (missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]})")
    return plain.eval()


def export_student(student, tokenizer, final: Path, cfg, signal=None, show_progress: bool = True,
                   state_dict: dict | None = None) -> Path:
    """Save ``student`` (LoRA adapters merged, byte head not included) with its tokenizer and a model card.

    ``state_dict``: the student's full weights from :func:`gather_student_state`; when the module itself holds
    only shards of them (FSDP, ZeRO-3), a plain copy is built from them, so nothing here is a collective."""
    final = Path(final)
    if state_dict is not None and not _holds_full_weights(student, state_dict):
        student = plain_student(student, state_dict)
    if hasattr(student, "merge_and_unload"):  # LoRA: fold adapters into the weights
        student = student.merge_and_unload()
    bpb = None
    if cfg.eval_data is not None:
        from ..evaluate import evaluate_file

        bpb = evaluate_file(student, tokenizer, cfg.eval_data)
    from ..io import atomic_folder

    with atomic_folder(final) as tmp:
        with _hf_progress_bars(show_progress):  # quiet runs print no "Writing model shards" bar
            student.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(_model_card(cfg, signal, bpb))
        if bpb:
            (tmp / "eval.json").write_text(json.dumps(bpb))
    return final
