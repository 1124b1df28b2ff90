"""``mergekd distill`` and ``mergekd eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError


def distill_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (flags override it)"),
    teachers: Optional[str] = typer.Option(None, help="comma-separated teacher specs, e.g. smollm2-135m,gemma3-270m"),
    student: Optional[str] = typer.Option(None, help="new:llama?tokenizer=gpt2&layers=4&hidden=256, hf:PATH, gguf:PATH"),
    data: Optional[Path] = typer.Option(None, help="training data: .txt, or .jsonl with 'text', or 'prompt' + "
                                                   "'response' (loss on the response only), or chat 'messages'"),
    out: Optional[Path] = typer.Option(None, help="output folder (checkpoints, metrics.jsonl, final/)"),
    eval_data: Optional[Path] = typer.Option(None, help="held-out text: BPB of the export goes in its model card"),
    mix: Optional[str] = typer.Option(None, help="mixer spec, e.g. linear, learned, product:weights=1;2"),
    fit_data: Optional[Path] = typer.Option(None, help="text to fit learned mixers on"),
    cache: Optional[Path] = typer.Option(None, help="teacher byte cache from `mergekd cache` (no teacher in memory)"),
    steps: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    grad_accum: Optional[int] = typer.Option(None), seq_bytes: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    warmup_steps: Optional[int] = typer.Option(None, help="linear warm-up steps before the cosine decay (10)"),
    teacher_max_length: Optional[int] = typer.Option(
        None, help="teacher window in tokens (default: the teacher's own, min(model positions, 1024), as in "
                   "cache and score); with --cache it must match the cache's window"),
    byte_head: Optional[str] = typer.Option(None, help="parallel (BLD) or recurrent"),
    byte_offsets: Optional[int] = typer.Option(None, help="K: bytes of the next token the head predicts"),
    byte_ce_weight: Optional[float] = typer.Option(None), kl_weight: Optional[float] = typer.Option(None),
    trie_kl_weight: Optional[float] = typer.Option(
        None, help="weight of D(mixture ‖ the byte rows the student's own token softmax implies) — trains the "
                   "token softmax at every byte of each student token (0)"),
    trie_kl_depth: Optional[int] = typer.Option(None, help="byte offsets per student token the trie term covers: "
                                                           "1 = first byte only, 0 = up to --byte-offsets (0)"),
    kl_loss: Optional[str] = typer.Option(None, help="forward-kl, reverse-kl or jsd"),
    term: Optional[list[str]] = typer.Option(
        None, "--term", metavar="NAME[:k=v,...]",
        help="objective term (repeatable): the whole loss as a list of registered terms, e.g. --term token_ce "
             "--term trie_kl:weight=3,divergence=jsd; replaces the weight flags. Terms: token_ce, byte_ce, kl, "
             "trie_kl and plugins (entry-point group mergekd.objective_terms)"),
    temperature: Optional[float] = typer.Option(None),
    save_every: Optional[int] = typer.Option(None), device: Optional[str] = typer.Option(None),
    mixed_precision: Optional[str] = typer.Option(None), teacher_placement: Optional[str] = typer.Option(None),
    lora_rank: Optional[int] = typer.Option(None),
    byte_rule: Optional[str] = typer.Option(None, help="teachers' token → byte rule: canonical (default) or "
                                                       "exact:K=8 (covering sum; slow, short texts)"),
    on_policy: Optional[float] = typer.Option(
        None, "--on-policy", metavar="FRACTION",
        help="on-policy distillation (GKD λ): fraction of batches whose continuations the student samples from the "
             "data's prompts; --on-policy 1 = every batch, 0 = off (default). Needs online teachers (no --cache)"),
    max_new_tokens: Optional[int] = typer.Option(None, help="on-policy: tokens sampled per continuation (64)"),
    gen_temperature: Optional[float] = typer.Option(None, help="on-policy: sampling temperature (1.0)"),
    top_p: Optional[float] = typer.Option(None, help="on-policy: nucleus sampling mass (1.0 = off)"),
    prompt_bytes: Optional[int] = typer.Option(None, help="prompt bytes: the start of each plain-text chunk "
                                                          "(on-policy), the end of a long prompt (prompt data) (64)"),
    ce_only: bool = typer.Option(False, "--ce-only", help="baseline: no teachers, token CE only"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Distil teachers into a student; rerunning the same command on the same --out resumes.

    Example: mergekd distill --teachers smollm2-135m,gemma3-270m --student "new:llama?tokenizer=gpt2" \\
             --data train.txt --steps 200 --out runs/demo

    On-policy (half the batches sampled by the student, reverse KL as GKD recommends):
             mergekd distill ... --on-policy 0.5 --kl-loss reverse-kl --max-new-tokens 64
    """
    overrides = {k: v for k, v in locals().items() if k not in ("config", "ce_only", "quiet", "term")}
    overrides["objective"] = list(term) if term else None
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
    for field in ("student", "data", "out"):
        if getattr(cfg, field, None) is None:
            raise ConfigError(f"{field}: required (flag --{field.replace('_', '-')} or YAML key {field})")
    final = distill(cfg, show_progress=not quiet)
    typer.echo(f"exported student: {final}")


def eval_command(
    model: str = typer.Option(..., help="model folder (e.g. OUT/final), or a teacher / student spec"),
    data: Path = typer.Option(..., help="held-out text (.txt or .jsonl)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write {'bpb', 'bytes', 'tokens'} here"),
    chunk_bytes: int = typer.Option(1024, help="texts are scored in independent chunks of this many bytes"),
    max_bytes: Optional[int] = typer.Option(None, help="score only the first N bytes of the data"),
) -> None:
    """Bits per byte from the model's own token NLL (comparable across tokenizers).

    Example: mergekd eval --model runs/demo/final --data heldout.txt
    """
    from rich.progress import Progress

    from ..evaluate import evaluate_file
    from ..io import write_json

    lm, tok = _load_eval_model(model)
    with Progress(transient=True) as bar:
        task = bar.add_task("eval", total=None)
        result = evaluate_file(lm, tok, data, chunk_bytes=chunk_bytes, limit_bytes=max_bytes,
                               progress=lambda n: bar.advance(task, n))
    typer.echo(f"{model}: {result['bpb']:.4f} bits/byte over {result['bytes']} bytes ({result['tokens']} tokens)")
    if json_out is not None:
        write_json(json_out, {"model": model, **result})


def _load_eval_model(model: str):
    """``--model``: an exported folder, a student spec (``new:``, ``hf:``, ``gguf:``) or a teacher spec.

    Student grammar first: ``new:llama?...`` is never a teacher, and ``hf:``/``gguf:`` load the same way either
    way; anything else is a registered teacher name (unknown names get the teacher registry's suggestions)."""
    from ..student import load_student

    if Path(model).is_dir():
        return load_student(f"hf:{model}")
    if model.startswith(("new:", "hf:", "gguf:")):
        return load_student(model)
    from ..teachers import load_teacher

    teacher = load_teacher(model)
    return teacher.model, teacher.tokenizer
