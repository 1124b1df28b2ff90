"""The distillation loop on ``accelerate``: resumable, deterministic, one process or many.

Determinism and resume: the data order is a pure function of (seed, step) (:mod:`mergekd.distill.stream`: the
data is streamed, and checkpoints record the stream's position); the learning rate a pure function of step;
model, head, optimizer and every process's RNG are saved by ``accelerate``; the mixer's state is saved beside them. Rerunning the same command on the same ``--out`` resumes from ``checkpoints/latest`` and ends with
the same weights as an uninterrupted run.

Scale: ``accelerate launch -m mergekd distill ...`` runs the same code data-parallel (DDP/FSDP/DeepSpeed per the
accelerate config). ``batch_size`` is the global batch; each process takes an equal, disjoint share.

On-policy (``on_policy`` = λ > 0, :mod:`mergekd.distill.onpolicy`): whether a step is on-policy is a pure
function of (seed, step); on such a step every process samples continuations for its own share of the batch's
prompts, each from a random stream keyed by (seed, step, position in the global batch), so resume stays exact.
The samples go to ``OUT/samples.jsonl`` (one line per sample, truncated on resume like ``metrics.jsonl``).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..bytes import byte_vocab_for
from ..bytes.targets import model_vocab_width
from ..errors import ConfigError, NonFiniteError
from ..student import build_byte_head, load_student
from ..student.byte_rows import StudentByteRows
from .batch import build_student_batch
from .onpolicy import fit_context, is_on_policy_step, sample_continuations, stream_seed
from .stream import DataPosition, ExampleStream
from ..io import write_atomic
from .checkpoint import check_resumable, latest_checkpoint, save_checkpoint
from .config import DistillConfig
from .objective import StudentWithHead
from .trackers import accelerator_kwargs, finish_trackers, log_eval, log_metrics, start_trackers


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _accelerator(cfg: DistillConfig):
    from accelerate import Accelerator

    device = None if cfg.device == "auto" else torch.device(cfg.device)
    cpu = (device is not None and device.type == "cpu") or (device is None and not torch.cuda.is_available())
    if device is not None and device.type == "cuda" and device.index is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"device: {cfg.device!r} pins one GPU, but accelerate launched "
                              f"{os.environ['WORLD_SIZE']} processes (one GPU each); use --device cuda or auto")
        torch.cuda.set_device(device)  # accelerate's single process takes the current CUDA device
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if (not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()) else "no"
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                              **accelerator_kwargs(cfg.report_to, Path(cfg.out)))
    _check_distributed(accelerator, cfg)
    return accelerator


def _check_distributed(accelerator, cfg: DistillConfig) -> None:
    """Sharded setups accelerate would not honour, or the loop cannot run: refused, never silently changed.

    Added with tests/test_scale_paths.py (issue "Scale paths that actually run"):
    - An accelerate config with FSDP or DeepSpeed on CPU processes: accelerate (1.15) applies FSDP only to GPU/
      accelerator processes (``AcceleratorState`` sets FSDP only for MULTI_GPU/XPU/...; CPU processes stay
      MULTI_CPU) and DeepSpeed only when ``cpu`` is False, so the run would silently be plain DDP.
    - On-policy sampling under FSDP: ``generate`` runs the student's forward once per new token, and under FSDP
      every forward all-gathers parameters, so processes whose samples stop after different numbers of tokens
      would hang (and sampling on a sharded module is untested).
    FSDP2 with ``cpu_ram_efficient_loading`` re-ties weights only through the root's ``tie_weights``:
    StudentWithHead delegates it to the student (without that, tied input/output embeddings trained as two tensors:
    0.01–0.05 max weight difference from the 1-process run, on CPU and on an H200)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    for env, wanted in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(env, "false").lower() == "true" and kind != wanted:
            raise ConfigError(f"device: the accelerate config asks for {wanted.value}, but accelerate runs these "
                              f"{accelerator.device.type} processes as {kind.value} (it applies {wanted.value} to GPU "
                              "processes only), so the run would silently not shard; on CPUs use plain data parallel "
                              "(torchrun --nproc_per_node N -m mergekd distill ...)")
    if kind == DistributedType.FSDP and cfg.on_policy > 0:
        raise ConfigError(f"on_policy: {cfg.on_policy:g} samples with the student, but generate on an FSDP-sharded "
                          "module is unsupported (each new token is a forward that all processes must join); use "
                          "DDP or DeepSpeed ZeRO-2, or set on_policy 0")


def _build_signal(cfg: DistillConfig, device, progress_print, loaded: list | None = None):
    """Teachers (online) or a cache, combined by the configured mixer. None for CE-only runs.

    ``loaded``: teachers already in memory, used instead of loading ``cfg.teachers`` (same order)."""
    if cfg.cache is not None:
        from ..cache import CachedSignal

        return CachedSignal(cfg.cache, cfg, progress=progress_print)  # checks the data by streaming its chunks
    if not cfg.teachers:
        return None
    from ..mix import build_mixer
    from ..teachers import load_teacher
    from .signal import TeacherSignal

    teachers = list(loaded or [])
    for spec in cfg.teachers[len(teachers):]:
        progress_print(f"loading teacher {spec} ...")
        teachers.append(load_teacher(spec, overrides={**cfg.teacher_overrides(), "device": "cpu"}))
    mixer = build_mixer(cfg.mix)
    if cfg.teacher_device not in (None, "auto"):  # the teachers' own device; else the student's
        device = torch.device(cfg.teacher_device)
    signal = TeacherSignal(teachers, mixer, device, cfg.teacher_placement)
    return signal


def _fit_mixer(signal, cfg: DistillConfig, stream: ExampleStream) -> None:
    mixer = getattr(signal, "mixer", None)
    if mixer is None or not getattr(mixer, "needs_fit", False):
        return
    from ..signal import actual_bytes
    from ..sources import iter_chunks

    views: list = []
    if cfg.fit_data and cfg.cache is None:  # a fitting set is small by design: read whole
        fit_texts, fit_idx = list(iter_chunks(cfg.fit_data, cfg.seq_bytes)), None
    else:  # a cache holds the training chunks only: fit on the first of them (in stream order)
        first = stream.first(16)
        fit_texts, fit_idx = [e.text for _, e in first], [i for i, _ in first]
        views = [e.chat for _, e in first]  # chats: each teacher scores its own rendering of the prompt
    rows = signal.byte_signal(fit_texts, fit_idx, views if any(v is not None for v in views) else None)
    mixer.fit(rows.logprobs, rows.masks, actual_bytes(fit_texts), teacher_names=rows.names)


@dataclass
class Run:
    """Everything one distillation holds between its phases (prepare → resume → steps → export)."""

    cfg: DistillConfig
    accelerator: Any
    console: Any
    out: Path
    tokenizer: Any
    vocab: Any
    stream: ExampleStream  # the training examples, read lazily in the seeded order
    terms: list
    model: Any  # StudentWithHead, prepared
    optimizer: Any
    signal: Any  # a mergekd.signal source, or None when no term reads teacher rows
    max_tokens: int
    pad_id: int
    start_step: int = 0

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def micro(self) -> int:
        return self.cfg.batch_size // (self.world * self.cfg.grad_accum)

    @property
    def mixer(self):
        return getattr(self.signal, "mixer", None)


def distill(cfg: DistillConfig, *, show_progress: bool = True, teachers: list | None = None) -> Path:
    """Run (or resume) a distillation; returns the export folder ``OUT/final``.

    ``teachers``: loaded teachers (``mergekd.teachers.load_teacher`` or ``Teacher(name, model, tokenizer)``) to use
    instead of loading ``cfg.teachers``, one per spec and in the same order — so a caller holding teachers in
    memory (an ablation sweep, tests) runs several distillations without reloading them. The specs still name
    the teachers in the config fingerprint and the model card."""
    if teachers is not None and len(teachers) != len(cfg.teachers):
        raise ConfigError(f"distill: {len(teachers)} loaded teachers given for {len(cfg.teachers)} teacher specs; "
                          "pass one per spec, in the same order")
    run = _prepare(cfg, show_progress, teachers)
    _resume(run)
    start_trackers(run.accelerator, cfg.report_to, run.out, run.out.name, cfg.model_dump(mode="json"),
                   start_step=run.start_step)
    try:
        with _progress_bar(run, show_progress) as (bar, task):
            run.model.train()
            for step in range(run.start_step, cfg.steps):
                record, logs, samples = _train_step(run, step)
                _log_step(run, record, logs, samples, bar, task)
                if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                    _checkpoint(run, step + 1)
        final = _export(run, show_progress)
        if cfg.report_to and run.accelerator.is_main_process and (final / "eval.json").is_file():
            log_eval(run.accelerator, {"eval/bpb": json.loads((final / "eval.json").read_text())["bpb"]}, cfg.steps)
    finally:
        finish_trackers(run.accelerator)
    return final


def _prepare(cfg: DistillConfig, show_progress: bool, teachers: list | None) -> Run:
    """Build the accelerator, student (+ head, + trie rows), optimizer, data and signal; refuse what cannot run.
    The data is read (and refused) before anything is written or any teacher loads."""
    from accelerate.utils import set_seed
    from rich.console import Console

    accelerator = _accelerator(cfg)
    console = Console(quiet=not (show_progress and accelerator.is_main_process))
    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by processes ({world}) × grad_accum "
                          f"({cfg.grad_accum}) so every process gets equal micro-batches")
    set_seed(cfg.seed)
    student, tokenizer = load_student(cfg.student)
    vocab = byte_vocab_for(tokenizer)
    stream = ExampleStream(cfg.data, seq_bytes=cfg.seq_bytes, prompt_bytes=cfg.prompt_bytes, seed=cfg.seed,
                           tokenizer=tokenizer, need_response=cfg.on_policy < 1)
    _check_data_kind(cfg, stream)
    stream.check()  # bad input in the first 64 MB (all of a small file) stops here, before anything is written
    terms = cfg.terms()
    model, optimizer = _student_module(cfg, student, vocab, terms)
    model, optimizer = accelerator.prepare(model, optimizer)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    # teachers load (or the cache opens) only when a term reads their rows
    signal = _build_signal(cfg, accelerator.device, console.print, teachers) if cfg.uses_teacher_rows else None
    if signal is not None and getattr(signal, "num_chunks", None) is not None:
        stream.limit = signal.num_chunks  # a cached run trains on the cache's chunks (the first N of the stream)
    return Run(cfg=cfg, accelerator=accelerator, console=console, out=Path(cfg.out), tokenizer=tokenizer,
               vocab=vocab, stream=stream, terms=terms, model=model, optimizer=optimizer, signal=signal,
               max_tokens=int(getattr(student.config, "max_position_embeddings", 2048)),
               pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def _student_module(cfg: DistillConfig, student, vocab, terms) -> tuple[StudentWithHead, torch.optim.Optimizer]:
    """The student with the byte head and trie rows that the objective's terms need, and its optimizer."""
    use_head = any(t.needs_byte_head for t in terms)
    head = build_byte_head(cfg.byte_head, student.config.hidden_size, cfg.byte_offsets) if use_head else None
    if cfg.lora_rank > 0:
        student = _with_lora(student, cfg.lora_rank)
    byte_rows = StudentByteRows.for_vocab(vocab, model_vocab_width(student)) if any(
        t.needs_student_byte_rows for t in terms) else None
    model = StudentWithHead(student, head, byte_rows)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    return model, optimizer


def _check_data_kind(cfg: DistillConfig, data: ExampleStream) -> None:
    if data.kind == "prompt" and cfg.cache is not None:
        raise ConfigError(f"cache: {cfg.data} holds prompt/response pairs, but byte caches cover plain-text chunks; "
                          "drop --cache (teachers run online)")
    if data.kind == "prompt" and cfg.prompt_bytes >= cfg.seq_bytes:
        raise ConfigError(f"prompt_bytes: {cfg.prompt_bytes} must be smaller than seq_bytes ({cfg.seq_bytes}) so "
                          "responses have room; lower --prompt-bytes or raise --seq-bytes")


def _resume(run: Run) -> None:
    """Load the latest checkpoint (model, optimizer, RNG, mixer) or fit a fresh mixer; trim the logs to the step."""
    ckpt = latest_checkpoint(run.out)
    if ckpt is not None:
        meta = check_resumable(ckpt, run.cfg.fingerprint())
        run.accelerator.load_state(str(ckpt))
        run.start_step = int(meta["step"])
        position = DataPosition.from_json(meta.get("data_position"))
        if position is not None:
            run.stream.seek(position)
        else:  # a checkpoint from before positions were recorded: the order is a pure function of the step
            run.stream.skip(run.start_step * run.cfg.batch_size)
        if run.mixer is not None and (ckpt / "mixer.pt").is_file():
            run.mixer.load_state_dict(torch.load(ckpt / "mixer.pt", weights_only=True))
        run.console.print(f"resuming from {ckpt.name} (step {run.start_step}/{run.cfg.steps})")
    elif run.signal is not None:
        _fit_mixer(run.signal, run.cfg, run.stream)
    if run.accelerator.is_main_process:
        _truncate_metrics(run.out / "metrics.jsonl", run.start_step)
        _truncate_metrics(run.out / "samples.jsonl", run.start_step)


@contextmanager
def _progress_bar(run: Run, show_progress: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]distill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=run.console,
                  disable=not (show_progress and run.accelerator.is_main_process)) as bar:
        yield bar, bar.add_task("distill", total=run.cfg.steps, completed=run.start_step, info="")


def _train_step(run: Run, step: int) -> tuple[dict, dict[str, float], list[dict]]:
    """One optimizer step over this process's share of the global batch, in ``grad_accum`` micro-batches.
    Returns the metrics record, the summed loss parts and the on-policy samples (gathered from every process)."""
    cfg, accelerator = run.cfg, run.accelerator
    t0 = time.perf_counter()
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    batch = run.stream.take(cfg.batch_size)  # the global batch; every process reads the same stream
    mine = batch[accelerator.process_index::run.world]
    positions = list(range(accelerator.process_index, len(batch), run.world))  # in the global batch
    on_policy = is_on_policy_step(step, cfg.on_policy, cfg.seed)
    logs: dict[str, float] = {}
    nbytes, samples = 0, []
    for m in range(cfg.grad_accum):
        part = slice(m * run.micro, (m + 1) * run.micro)
        parts, n, drawn = _micro_step(run, step, mine[part], positions[part], on_policy)
        nbytes, samples = nbytes + n, samples + drawn
        for k, v in parts.items():  # means over micro-batches; counts (tokens) add up
            logs[k] = logs.get(k, 0.0) + float(v.detach()) / (1 if k == "tokens" else cfg.grad_accum)
    if on_policy and run.world > 1:
        from accelerate.utils import gather_object

        samples = sorted(gather_object(samples), key=lambda r: r["index"])
    elapsed = time.perf_counter() - t0
    record = {"step": step + 1, "lr": lr_at(step, cfg), **{k: round(v, 6) for k, v in logs.items()},
              "bytes_per_s": round(nbytes * run.world / elapsed, 1), "step_s": round(elapsed, 4),
              "on_policy": on_policy}
    if on_policy:
        sample_bytes = [len(r["sample"].encode("utf-8")) for r in samples]
        record["sample_bytes"] = round(sum(sample_bytes) / max(len(sample_bytes), 1), 1)
        record["sample_trimmed_bytes"] = sum(r["trimmed_bytes"] for r in samples)
    return record, logs, samples


def _micro_step(run: Run, step: int, part: list, positions: list[int], on_policy: bool):
    """Forward, backward and (on the last micro-batch) the optimizer step of one micro-batch of (stream index,
    example) pairs. Returns the loss parts, the text bytes trained on and the on-policy sample records."""
    cfg, accelerator = run.cfg, run.accelerator
    part_idx, examples = [i for i, _ in part], [e for _, e in part]
    samples: list[dict] = []
    if on_policy:
        drawn = _sample(accelerator, run.model, run.vocab, examples, positions, step, cfg, run.max_tokens,
                        run.pad_id)
        texts, loss_from = [s.text for s in drawn], [s.prompt_bytes for s in drawn]
        samples = [{"step": step + 1, "index": pos, "prompt": s.prompt, "sample": s.continuation,
                    "tokens": s.tokens, "trimmed_bytes": s.trimmed} for pos, s in zip(positions, drawn)]
    else:
        texts, loss_from = [e.text for e in examples], [e.loss_from for e in examples]
    batch, _ = build_student_batch(run.vocab, texts, cfg.byte_offsets, run.max_tokens, run.pad_id, loss_from)
    teacher_lp = teacher_mask = None
    if run.signal is not None:
        # chats: each teacher reads the context in its own template, then the reply (or the student's sample)
        views = [s.teacher_view(e) for s, e in zip(drawn, examples)] if on_policy else [e.chat for e in examples]
        teacher_lp, teacher_mask = run.signal(texts, part_idx, views)
        teacher_lp, teacher_mask = teacher_lp.to(accelerator.device), teacher_mask.to(accelerator.device)
    with accelerator.accumulate(run.model):
        with accelerator.autocast():
            # on sampled batches only the teacher terms train (no reference text to take CE on)
            parts = run.model(batch.to(accelerator.device), teacher_lp, teacher_mask, run.terms, on_policy)
        if not torch.isfinite(parts["loss"]):
            raise NonFiniteError(
                f"loss is {parts['loss'].item()} at step {step + 1} ("
                + ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in parts.items() if k != "loss")
                + "); lower --lr, or resume from the last checkpoint with other settings")
        accelerator.backward(parts["loss"])
        run.optimizer.step()
        run.optimizer.zero_grad()
    return parts, sum(len(t.encode("utf-8")) for t in texts), samples


def _log_step(run: Run, record: dict, logs: dict[str, float], samples: list[dict], bar, task) -> None:
    """metrics.jsonl (every ``log_every`` steps and the last), samples.jsonl (one write per step: a kill leaves
    whole steps or a torn last line, dropped on resume), and the progress bar."""
    step, cfg = record["step"], run.cfg
    if run.accelerator.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps):
        with (run.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log_metrics(run.accelerator, record, step)
    if run.accelerator.is_main_process and samples:
        with (run.out / "samples.jsonl").open("a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in samples))
    info = " ".join(f"{k} {logs[k]:.3f}" for k in ("loss", *(t.name for t in run.terms)) if k in logs)
    if record["on_policy"]:
        info += f" | on-policy {record['sample_bytes']:.0f} B/sample"
    bar.update(task, advance=1, info=f"{info} | {record['bytes_per_s']:.0f} B/s")


def _checkpoint(run: Run, step: int) -> None:
    meta = {"fingerprint": run.cfg.fingerprint(), "config": run.cfg.model_dump(mode="json"),
            "data_position": run.stream.position.to_json()}
    mixer = run.mixer
    writers = [lambda folder: torch.save(mixer.state_dict(), folder / "mixer.pt")] if mixer is not None and \
        hasattr(mixer, "state_dict") else []
    save_checkpoint(run.accelerator, run.out, step, meta, writers, keep=run.cfg.keep_checkpoints)


def _export(run: Run, show_progress: bool) -> Path:
    """Every process joins the gathering of the full weights (a collective under FSDP / ZeRO-3; the module's own
    tensors under DDP); then the main process alone merges, evaluates and saves, with no collective inside."""
    from .export import export_student, gather_student_state

    final = run.out / "final"
    state = gather_student_state(run.accelerator, run.model)
    if run.accelerator.is_main_process:
        unwrapped = run.accelerator.unwrap_model(run.model)
        export_student(unwrapped.student, run.tokenizer, final, run.cfg, run.signal, show_progress=show_progress,
                       state_dict=state)
    run.accelerator.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop JSONL lines past the resumed step (they belong to work that the crash threw away), and a torn last
    line that a kill in the middle of a write left behind."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 is not a line end
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


def _sample(accelerator, model, vocab, examples, positions: list[int], step: int, cfg: DistillConfig,
            max_tokens: int, pad_id: int) -> list:
    """The student's continuations of ``examples``' prompts for this process's share of an on-policy step."""
    student = accelerator.unwrap_model(model).student
    seeds = [stream_seed(cfg.seed, step, pos) for pos in positions]
    drawn = sample_continuations(student, vocab, [e.prompt for e in examples], seeds,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.gen_temperature,
                                 top_p=cfg.top_p, max_tokens=max_tokens, pad_id=pad_id,
                                 autocast=accelerator.autocast)
    return [fit_context(vocab, s, max_tokens) for s in drawn]


def _with_lora(student, rank: int):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora_rank > 0 needs peft: pip install 'mergekd[lora]'") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(student, config)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
