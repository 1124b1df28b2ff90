"""The distillation loop on ``accelerate``: resumable, deterministic, one process or many.

Determinism and resume: the data order is a pure function of (seed, step); the learning rate a pure function of
step; model, head, optimizer and every process's RNG are saved by ``accelerate``; the mixer's state is saved
beside them. Rerunning the same command on the same ``--out`` resumes from ``checkpoints/latest`` and ends with
the same weights as an uninterrupted run.

Scale: ``accelerate launch -m mergekd distill ...`` runs the same code data-parallel (DDP/FSDP/DeepSpeed per the
accelerate config). ``batch_size`` is the global batch; each process takes an equal, disjoint share.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from ..bytes import byte_vocab_for
from ..data import load_chunks
from ..errors import ConfigError
from ..student import build_byte_head, load_student
from .batch import build_student_batch
from .checkpoint import check_resumable, latest_checkpoint, save_checkpoint, write_atomic
from .config import DistillConfig
from .objective import LossWeights, StudentWithHead


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(num_chunks: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Chunk indices of the global batch of ``step``: epoch-wise permutations, a pure function of (seed, step)."""
    out = []
    perms: dict[int, torch.Tensor] = {}
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(k, num_chunks)
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(num_chunks, generator=g)
        out.append(int(perms[epoch][index]))
    return out


def _accelerator(cfg: DistillConfig):
    from accelerate import Accelerator

    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if (not cpu and torch.cuda.is_bf16_supported()) else "no"
    return Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum)


def _build_signal(cfg: DistillConfig, device, progress_print):
    """Teachers (online) or a cache, combined by the configured mixer. None for CE-only runs."""
    if cfg.cache is not None:
        from ..cache import CachedSignal

        return CachedSignal(cfg.cache, cfg)
    if not cfg.teachers:
        return None
    from ..mix import build_mixer
    from ..teachers import load_teacher
    from .signal import TeacherSignal

    teachers = []
    for spec in cfg.teachers:
        progress_print(f"loading teacher {spec} ...")
        teachers.append(load_teacher(spec, overrides={"device": "cpu", "max_length": cfg.teacher_max_length}))
    mixer = build_mixer(cfg.mix)
    signal = TeacherSignal(teachers, mixer, device, cfg.teacher_placement)
    return signal


def _fit_mixer(signal, cfg: DistillConfig, chunks: list[str]) -> None:
    mixer = getattr(signal, "mixer", None)
    if mixer is None or not getattr(mixer, "needs_fit", False):
        return
    from .signal import actual_bytes, stack_targets

    if cfg.fit_data and cfg.cache is None:
        fit_texts, fit_idx = load_chunks(cfg.fit_data, cfg.seq_bytes), None
    else:  # a cache holds the training chunks only: fit on the first of them
        fit_idx = list(range(min(16, len(chunks))))
        fit_texts = [chunks[i] for i in fit_idx]
    logprobs, masks = stack_targets(signal.per_teacher(fit_texts, fit_idx))
    mixer.fit(logprobs, masks, actual_bytes(fit_texts), teacher_names=signal.names)


def distill(cfg: DistillConfig, *, show_progress: bool = True) -> Path:
    """Run (or resume) a distillation; returns the export folder ``OUT/final``."""
    from accelerate.utils import set_seed
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    accelerator = _accelerator(cfg)
    console = Console(quiet=not (show_progress and accelerator.is_main_process))
    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by processes ({world}) × grad_accum "
                          f"({cfg.grad_accum}) so every process gets equal micro-batches")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    student, tokenizer = load_student(cfg.student)
    vocab = byte_vocab_for(tokenizer)
    use_head = bool(cfg.teachers or cfg.cache) and (cfg.byte_ce_weight > 0 or cfg.kl_weight > 0)
    head = build_byte_head(cfg.byte_head, student.config.hidden_size, cfg.byte_offsets) if use_head else None
    if cfg.lora_rank > 0:
        student = _with_lora(student, cfg.lora_rank)
    model = StudentWithHead(student, head)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    chunks = load_chunks(cfg.data, cfg.seq_bytes)
    signal = _build_signal(cfg, accelerator.device, console.print) if use_head else None
    weights = LossWeights(cfg.token_ce_weight, cfg.byte_ce_weight, cfg.kl_weight, cfg.kl_loss, cfg.temperature)
    max_tokens = int(getattr(student.config, "max_position_embeddings", 2048))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    start_step = 0
    fingerprint = cfg.fingerprint()
    ckpt = latest_checkpoint(out)
    mixer = getattr(signal, "mixer", None)
    if ckpt is not None:
        meta = check_resumable(ckpt, fingerprint)
        accelerator.load_state(str(ckpt))
        start_step = int(meta["step"])
        if mixer is not None and (ckpt / "mixer.pt").is_file():
            mixer.load_state_dict(torch.load(ckpt / "mixer.pt", weights_only=False))
        console.print(f"resuming from {ckpt.name} (step {start_step}/{cfg.steps})")
    elif signal is not None:
        _fit_mixer(signal, cfg, chunks)

    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        _truncate_metrics(metrics_path, start_step)
    meta = {"fingerprint": fingerprint, "config": cfg.model_dump(mode="json")}
    writers = [lambda folder: torch.save(mixer.state_dict(), folder / "mixer.pt")] if mixer is not None and \
        hasattr(mixer, "state_dict") else []
    micro = cfg.batch_size // (world * cfg.grad_accum)

    columns = [TextColumn("[bold]distill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not (show_progress and accelerator.is_main_process)) as bar:
        task = bar.add_task("distill", total=cfg.steps, completed=start_step, info="")
        model.train()
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            indices = batch_indices(len(chunks), step, cfg.batch_size, cfg.seed)
            mine = indices[accelerator.process_index::world]
            logs: dict[str, float] = {}
            nbytes = 0
            for m in range(cfg.grad_accum):
                part_idx = mine[m * micro:(m + 1) * micro]
                part = [chunks[i] for i in part_idx]
                nbytes += sum(len(t.encode("utf-8")) for t in part)
                batch, _ = build_student_batch(vocab, part, cfg.byte_offsets, max_tokens, pad_id)
                teacher_lp = teacher_mask = None
                if signal is not None:
                    teacher_lp, teacher_mask = signal(part, part_idx)
                    teacher_lp, teacher_mask = teacher_lp.to(accelerator.device), teacher_mask.to(accelerator.device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        parts = model(batch.to(accelerator.device), teacher_lp, teacher_mask, weights)
                    if not torch.isfinite(parts["loss"]):
                        raise FloatingPointError(f"loss is {parts['loss'].item()} at step {step}")
                    accelerator.backward(parts["loss"])
                    optimizer.step()
                    optimizer.zero_grad()
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            elapsed = time.perf_counter() - t0
            record = {"step": step + 1, "lr": lr_at(step, cfg), **{k: round(v, 6) for k, v in logs.items()},
                      "bytes_per_s": round(nbytes * world / elapsed, 1)}
            if accelerator.is_main_process and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
            info = " ".join(f"{k} {logs[k]:.3f}" for k in ("loss", "token_ce", "byte_ce", "kl") if k in logs)
            bar.update(task, advance=1, info=f"{info} | {record['bytes_per_s']:.0f} B/s")
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(accelerator, out, step + 1, meta, writers, keep=cfg.keep_checkpoints)

    from .export import export_student

    final = out / "final"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        export_student(unwrapped.student, tokenizer, final, cfg, signal)
    accelerator.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (they belong to work that the crash threw away)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_atomic(path, "".join(line + "\n" for line in kept))


def _with_lora(student, rank: int):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora_rank > 0 needs peft: pip install 'mergekd[lora]'") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(student, config)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
