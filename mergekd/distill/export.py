"""Export: the student alone, as a plain Hugging Face model folder with a model card. The byte head is dropped.

Written into a temporary sibling folder and renamed into place, so ``OUT/final`` is always complete.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path


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
    if cfg.teachers or cfg.cache:
        lines.append(f"- loss: token CE × {cfg.token_ce_weight} + byte CE × {cfg.byte_ce_weight} + {cfg.kl_loss} × "
                     f"{cfg.kl_weight} (T = {cfg.temperature}), byte head {cfg.byte_head} K = {cfg.byte_offsets} "
                     "(dropped at export)" + (f" + token-trie {cfg.kl_loss} × {cfg.trie_kl_weight} on the byte rows "
                                             "of the student's own token softmax (depth "
                                             f"{cfg.trie_kl_depth or cfg.byte_offsets})" if cfg.trie_kl_weight
                                             else ""))
    else:
        lines.append(f"- loss: token CE only (baseline), weight {cfg.token_ce_weight}")
    if getattr(cfg, "on_policy", 0) > 0:
        lines.append(f"- on-policy: {cfg.on_policy:g} of the batches sampled by the student ({cfg.max_new_tokens} new "
                     f"tokens, temperature {cfg.gen_temperature}, top-p {cfg.top_p}, {cfg.prompt_bytes}-byte prompts) "
                     f"and trained on {cfg.kl_loss} to the teachers on the sampled bytes")
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


def export_student(student, tokenizer, final: Path, cfg, signal=None, show_progress: bool = True) -> Path:
    final = Path(final)
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
