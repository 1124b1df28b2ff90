"""``mergekd demo``: the whole idea, end to end, on one laptop-class CPU in minutes, with no internet.

Why a demo command and not a notebook: a new user should see a real result on real models with one command, and
the same command is the project's acceptance test for "distillation beats plain fine-tuning". Every step is a
library call a user would make (cache → score → distill → eval), so the demo doubles as a worked example.

Steps (each is skipped on a rerun when its output is already there, so an interrupted demo resumes):

1. **data** — two disjoint slices of a public-domain book from the offline text cache (Botchan, without the
   Gutenberg header and licence): the first ``train_bytes`` for training, the last ``heldout_bytes`` held out.
2. **cache** — each teacher runs once over the training chunks (:func:`mergekd.cache.capture_cache`); the
   distillation then needs no teacher in memory.
3. **teachers** — held-out bits per byte of each teacher and of their mixture (:func:`mergekd.score.score`).
4. **students** — the same fresh student (a third tokenizer), data, steps and seed trained twice: CE-only, and
   distilled from the cached mixture through the byte head.
5. **report** — held-out bits per byte of all of them, measured the same way: the canonical-path byte rule on
   the same held-out chunks (students are scored as teachers, from their exported folders), plus the students'
   token-level BPB (``mergekd eval``). Written to ``OUT/demo.json`` and ``OUT/demo.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .io import write_if_changed
from .errors import ConfigError

DEFAULT_STUDENT = "new:llama?tokenizer=mistral-v3&layers=2&hidden=128&heads=4&ctx=512"


@dataclass
class DemoConfig:
    """The demo's knobs. The defaults are the measured configuration in the README (≈ 8 minutes on 2 cores)."""

    out: Path = Path("runs/demo")
    teachers: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m"])
    student: str = DEFAULT_STUDENT
    text: str = "botchan"
    train_bytes: int = 32_000
    heldout_bytes: int = 8_000
    seq_bytes: int = 512
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    mix: str = "linear"
    # measured on this demo (README "The demo" and "Which objective term"): the token-trie term alone, weight 3, beats CE-only on both seeds
    # tried; the byte-head losses (kl_weight, byte_ce_weight) did not at this scale
    kl_weight: float = 0.0
    byte_ce_weight: float = 0.0
    kl_loss: str = "forward-kl"
    trie_kl_weight: float = 3.0
    trie_kl_depth: int = 0
    seed: int = 0
    score_chunk_bytes: int = 1024
    # the teacher-runtime group (same flags as score/cache/distill); the demo's window is 512 tokens (measured)
    teacher_max_length: int = 512
    teacher_device: str | None = None
    teacher_batch_size: int | None = None
    byte_rule: str = "canonical"

    def check(self) -> None:
        if self.train_bytes < 4 * self.seq_bytes:
            raise ConfigError(f"train_bytes={self.train_bytes} is less than 4 chunks of seq_bytes={self.seq_bytes}; "
                              "raise --train-bytes")
        if self.heldout_bytes < 256:
            raise ConfigError(f"heldout_bytes={self.heldout_bytes} is too small to measure; use at least 256")
        if not self.teachers:
            raise ConfigError("teachers is empty: the demo distils at least one teacher")


def prepare_data(cfg: DemoConfig) -> tuple[Path, Path]:
    """``OUT/data/train.txt`` and ``OUT/data/heldout.txt``: disjoint byte ranges of the book's body."""
    from .assets import read_body, text_slice

    size = len(read_body(cfg.text).encode("utf-8"))
    if cfg.train_bytes + cfg.heldout_bytes > size:
        raise ConfigError(f"train_bytes + heldout_bytes = {cfg.train_bytes + cfg.heldout_bytes:,} exceeds the "
                          f"{size:,} bytes of {cfg.text!r}; lower them")
    train, heldout = cfg.out / "data" / "train.txt", cfg.out / "data" / "heldout.txt"
    write_if_changed(train, text_slice(cfg.text, 0, cfg.train_bytes))
    write_if_changed(heldout, text_slice(cfg.text, -cfg.heldout_bytes))
    return train, heldout


def _run_overrides(cfg: DemoConfig, train: Path, heldout: Path, name: str) -> dict[str, Any]:
    return dict(student=cfg.student, data=str(train), eval_data=str(heldout), steps=cfg.steps,
                batch_size=cfg.batch_size, seq_bytes=cfg.seq_bytes, lr=cfg.lr, seed=cfg.seed, warmup_steps=10,
                save_every=max(25, cfg.steps // 4), out=str(cfg.out / name), teacher_max_length=cfg.teacher_max_length)


def _finished(run_dir: Path, fingerprint: str) -> dict | None:
    """The eval of a finished run of this exact config, or None (then distill() runs or resumes it)."""
    marker = run_dir / "demo-done.json"
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("fingerprint") == fingerprint and (run_dir / "final").is_dir() else None


def _train(cfg_overrides: dict, log: Callable[[str], None], show_progress: bool) -> dict:
    """Train one student unless this exact config already finished. The run folder is named by the config's
    fingerprint, so a demo rerun with other settings trains new students next to the old ones instead of
    refusing to resume a different run."""
    from .distill import distill, load_config

    probe = load_config(None, cfg_overrides)
    run_cfg = probe.model_copy(update={"out": Path(probe.out) / probe.fingerprint()[:8]})
    run_dir = Path(run_cfg.out)
    done = _finished(run_dir, run_cfg.fingerprint() + f":{run_cfg.steps}")
    if done is not None:
        log(f"{run_dir.name}: already trained ({run_cfg.steps} steps), skipping")
        return done
    start = time.perf_counter()
    final = distill(run_cfg, show_progress=show_progress)
    result = {"fingerprint": run_cfg.fingerprint() + f":{run_cfg.steps}", "final": str(final), "run": str(run_dir),
              "eval": json.loads((final / "eval.json").read_text()), "seconds": time.perf_counter() - start}
    write_if_changed(run_dir / "demo-done.json", json.dumps(result, indent=1))
    return result


def _score(specs: list[str], heldout: Path, mix: str | None, chunk_bytes: int, fit: Path | None,
           progress_factory, runtime: dict) -> dict:
    """Score with a progress display opened only for this call (rich allows one live display at a time, and
    the cache capture and the distillation loop open their own)."""
    from contextlib import nullcontext

    from .score import score

    with (progress_factory() if progress_factory else nullcontext(None)) as progress:
        return score(specs, heldout, mix=mix, fit_data=fit, chunk_bytes=chunk_bytes, progress=progress,
                     **runtime).to_json()


def run_demo(cfg: DemoConfig, *, log: Callable[[str], None] = print, show_progress: bool = True,
             score_progress=None) -> dict:
    """Run (or resume) the demo; returns the report that is also written to ``OUT/demo.json``.

    ``score_progress``: a function returning a context manager that yields a
    :class:`mergekd.score.ScoreProgress` (the CLI's rich bar), or None for no scoring progress.
    """
    from .cache import capture_cache
    from .teachers import check_loadable, resolve_teacher

    cfg.check()
    cfg.out = Path(cfg.out)
    t_start = time.perf_counter()
    for spec in cfg.teachers:  # a missing teacher fails in a second, not after minutes of work
        check_loadable(resolve_teacher(spec))
    timings: dict[str, float] = {}
    runtime = {"device": cfg.teacher_device, "batch_size": cfg.teacher_batch_size, "byte_rule": cfg.byte_rule}

    log(f"[1/5] data: {cfg.train_bytes:,} training bytes and {cfg.heldout_bytes:,} held-out bytes of {cfg.text!r}")
    train, heldout = prepare_data(cfg)

    log(f"[2/5] cache: each teacher runs once over the training text ({', '.join(cfg.teachers)})")
    t0 = time.perf_counter()
    cache = cfg.out / "cache"
    capture_cache(cache, cfg.teachers, train, seq_bytes=cfg.seq_bytes, max_length=cfg.teacher_max_length,
                  device=cfg.teacher_device or "cpu", batch_size=cfg.teacher_batch_size, byte_rule=cfg.byte_rule,
                  show_progress=show_progress)
    timings["cache"] = time.perf_counter() - t0

    log("[3/5] teachers: held-out bits per byte of each teacher and of their mixture")
    t0 = time.perf_counter()
    teacher_json = cfg.out / "score-teachers.json"
    key = {"teachers": cfg.teachers, "mix": cfg.mix, "heldout": heldout.read_text(encoding="utf-8"),
           "chunk_bytes": cfg.score_chunk_bytes}
    teachers = _cached_json(teacher_json, key, lambda: _score(
        cfg.teachers, heldout, cfg.mix, cfg.score_chunk_bytes, train, score_progress, runtime))
    timings["teachers"] = time.perf_counter() - t0

    log(f"[4/5] students: CE-only and distilled, {cfg.steps} steps each ({cfg.student})")
    t0 = time.perf_counter()
    ce = _train({**_run_overrides(cfg, train, heldout, "ce-only"), "teachers": [], "byte_ce_weight": 0.0,
                 "kl_weight": 0.0}, log, show_progress)
    distilled = _train({**_run_overrides(cfg, train, heldout, "distilled"), "teachers": cfg.teachers,
                        "cache": str(cache), "mix": cfg.mix, "kl_weight": cfg.kl_weight,
                        "byte_ce_weight": cfg.byte_ce_weight, "kl_loss": cfg.kl_loss,
                        "trie_kl_weight": cfg.trie_kl_weight, "trie_kl_depth": cfg.trie_kl_depth,
                        "byte_rule": cfg.byte_rule, "teacher_device": cfg.teacher_device,
                        "teacher_batch_size": cfg.teacher_batch_size}, log,
                       show_progress)
    timings["students"] = time.perf_counter() - t0

    log("[5/5] report: every model scored the same way on the held-out text")
    t0 = time.perf_counter()
    students = _score([f"hf:{ce['final']}", f"hf:{distilled['final']}"], heldout, None, cfg.score_chunk_bytes,
                      None, score_progress, runtime)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    rows = [{"model": name, "kind": "teacher", "byte_bpb": t["bpb"], "token_bpb": None}
            for name, t in teachers["teachers"].items()]
    if teachers.get("mixture"):
        rows.append({"model": f"mixture ({cfg.mix})", "kind": "mixture", "byte_bpb": teachers["mixture"]["bpb"],
                     "token_bpb": None})
    for label, run, spec in (("student, CE-only", ce, f"hf:{ce['final']}"),
                             ("student, distilled", distilled, f"hf:{distilled['final']}")):
        rows.append({"model": label, "kind": "student", "byte_bpb": students["teachers"][spec]["bpb"],
                     "token_bpb": run["eval"]["bpb"], "folder": run["final"]})
    ce_row, dist_row = rows[-2], rows[-1]
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
              "heldout_bytes": teachers["bytes"], "rows": rows,
              "distilled_beats_ce_only": dist_row["byte_bpb"] < ce_row["byte_bpb"],
              "gain_bits_per_byte": ce_row["byte_bpb"] - dist_row["byte_bpb"],
              "seconds": {k: round(v, 1) for k, v in timings.items()}}
    write_if_changed(cfg.out / "demo.json", json.dumps(report, indent=1))
    write_if_changed(cfg.out / "demo.md", markdown_table(report))
    return report


def _cached_json(path: Path, key: dict, compute: Callable[[], dict]) -> dict:
    """``compute()`` once per ``key``: a rerun of the demo reuses the teacher scores (minutes of CPU)."""
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved["result"]
        except (OSError, ValueError):
            pass
    result = compute()
    write_if_changed(path, json.dumps({"key": key, "result": result}, indent=1))
    return result


def markdown_table(report: dict) -> str:
    """The report as the markdown table the README quotes."""
    lines = ["| model | held-out BPB (byte rule) | held-out BPB (own tokens) |", "|---|---|---|"]
    for row in report["rows"]:
        token = f"{row['token_bpb']:.4f}" if row.get("token_bpb") is not None else "—"
        lines.append(f"| {row['model']} | {row['byte_bpb']:.4f} | {token} |")
    lines.append("")
    lines.append(f"held-out: {report['heldout_bytes']:,} bytes; distilled − CE-only: "
                 f"{-report['gain_bits_per_byte']:+.4f} bits/byte; total {report['seconds']['total']:.0f} s")
    return "\n".join(lines) + "\n"
