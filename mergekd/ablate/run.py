"""Running an ablation: data slices → one teacher cache → teacher reference BPB → every cell → reports.

Why this order: the teacher forward passes are the slow part on small hardware (~500 bytes/s for two small
teachers on 2 CPU cores), so they happen once, up front, for the union of the grid's teachers; every cell then
trains from a view of that cache with no teacher in memory. Teacher reference BPB is computed before the cells so
that an interrupted grid still has its reference lines.

Rerun = resume. A cell is finished when ``OUT/cells/<id>/result.json`` exists and records the cell's current
fingerprint (a hash of everything that changes its result: its settings, the *content* of its data files, the
cache's capture options and teacher weights). A cell that was interrupted resumes through the distill loop's own
checkpoints; a cell whose settings changed since its folder was written is restarted from scratch (its old
folder would otherwise be resumed with the wrong settings). All result files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache.identity import sha256_file
from ..io import write_atomic
from ..errors import ConfigError
from .config import PATH_FIELDS, AblationConfig, Cell, expand_cells, load_ablation, teacher_labels
from .data import check_disjoint, is_asset, materialize, target_path

FINGERPRINT_EXCLUDE = {"out", "cache", "device", "save_every", "keep_checkpoints", "log_every", *PATH_FIELDS}


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Plan:
    """What a run will do: the cells, and for each cache group (cells sharing data and chunking) its teachers."""

    config: AblationConfig
    out: Path
    cells: list[Cell]
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # cache key → {specs, cache path, sample cfg}
    cell_group: dict[str, str] = field(default_factory=dict)  # cell id → cache key
    online: list[str] = field(default_factory=list)  # teacher cells that cannot use a cache (e.g. on-policy)

    @property
    def teachers(self) -> list[str]:
        return list(dict.fromkeys(t for c in self.cells for t in c.teachers))

    @property
    def labels(self) -> dict[str, str]:
        return teacher_labels(self.teachers, self.config.labels)

    @property
    def eval_files(self) -> list[Path]:
        return list(dict.fromkeys(Path(c.config.eval_data) for c in self.cells))


def _group_key(cell: Cell) -> tuple:
    c = cell.config
    return (str(c.data), c.seq_bytes, c.byte_rule, c.teacher_max_length)


def make_plan(cfg: AblationConfig, out: Path) -> Plan:
    out = Path(out)
    cells = expand_cells(cfg, out)
    if not cells:
        raise ConfigError("the grid has no cells")
    plan = Plan(cfg, out, cells)
    if not cfg.cache.enabled:
        return plan
    keys = list(dict.fromkeys(_group_key(c) for c in cells if not c.ce_only))
    if cfg.cache.path is not None and len(keys) > 1:
        raise ConfigError(f"cache.path names one cache, but the grid's teacher cells need {len(keys)} (their data, "
                          "seq_bytes, byte_rule or teacher_max_length differ); drop cache.path to let ablate keep "
                          "one cache per combination under OUT/cache")
    online = [c for c in cells if not c.ce_only and not _cacheable(c, out)]
    if online:
        plan.online = [c.id for c in online]
    keys = list(dict.fromkeys(_group_key(c) for c in cells if not c.ce_only and c not in online))
    for key in keys:
        data, seq, rule, max_len = key
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]
        slug = f"{Path(data).stem}-{seq}-{digest}"
        members = [c for c in cells if not c.ce_only and c not in online and _group_key(c) == key]
        specs = list(dict.fromkeys(t for c in members for t in c.teachers))
        path = Path(cfg.cache.path) if cfg.cache.path is not None else out / "cache" / slug
        plan.groups[slug] = {"specs": specs, "path": path, "data": Path(data), "seq_bytes": seq, "byte_rule": rule,
                             "max_length": cfg.cache.max_length or max_len, "views": out / "cache-views" / slug}
        for c in members:
            plan.cell_group[c.id] = slug
    return plan


def _cacheable(cell: Cell, out: Path) -> bool:
    """Whether the cell's settings allow a byte cache (on-policy training, for one, needs live teachers: the
    cache holds targets for the training text only). Asked of DistillConfig itself, so new rules apply."""
    from pydantic import ValidationError

    from ..distill.config import DistillConfig

    try:
        DistillConfig(**{**cell.config.model_dump(), "cache": out / "cache-views" / "check"})
        return True
    except (ValidationError, ConfigError):
        return False


# ------------------------------------------------------------------------------------------------------------


def _teacher_reference(spec: str, label: str, eval_file: Path, out: Path, device: str, max_length: int,
                       say) -> dict:
    """The teacher's own held-out BPB (token NLL, the same measure as the students'), saved once per
    (teacher, eval text) under OUT/teachers/."""
    sha = sha256_file(eval_file)
    fingerprint = hashlib.sha256(json.dumps([spec, sha]).encode()).hexdigest()[:16]
    path = out / "teachers" / f"{label}.{eval_file.stem}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            return saved
    from ..evaluate import evaluate_file
    from ..teachers import load_teacher

    say(f"teacher reference: loading {spec} ...")
    t0 = time.perf_counter()
    with load_teacher(spec, overrides={"device": device, "max_length": max_length}) as teacher:
        result = evaluate_file(teacher.model, teacher.tokenizer, eval_file)
    record = {"teacher": label, "spec": spec, "eval_data": str(eval_file), "fingerprint": fingerprint, **result,
              "seconds": round(time.perf_counter() - t0, 1)}
    write_atomic(path, json.dumps(record, indent=1))
    say(f"teacher reference: {label} {result['bpb']:.4f} bits/byte on {eval_file.name}")
    return record


def _fingerprint(cell: Cell, cache_ident: dict | None) -> str:
    """Hash of everything that changes the cell's result; file and cache *paths* are replaced by contents, so a
    moved output folder is still finished."""
    c = cell.config
    fields = c.model_dump(mode="json", exclude=FINGERPRINT_EXCLUDE)
    for key in PATH_FIELDS:
        value = getattr(c, key)
        fields[f"{key}_sha256"] = sha256_file(Path(value)) if value is not None and not (
            key == "fit_data" and cache_ident is not None) else None
    fields["cache"] = cache_ident
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _reset_accelerate() -> None:
    """``accelerate`` keeps a process-wide state that refuses a second Accelerator with other settings (e.g. a
    mixed_precision axis); clear it between cells. The distributed part (PartialState) is kept."""
    try:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
    except Exception:  # an accelerate without this hook: cells with equal settings still work
        pass


def _last_metrics(folder: Path) -> dict:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def run_cell(cell: Cell, fingerprint: str, *, show_progress: bool, say) -> dict:
    """Run (or resume, or skip) one cell; returns its result record (``status``: ran, resumed or skipped)."""
    from ..distill import distill
    from ..distill.checkpoint import latest_checkpoint, read_meta

    folder = Path(cell.config.out)
    result_path, marker = folder / "result.json", folder / "cell.json"
    if result_path.is_file():
        saved = json.loads(result_path.read_text())
        if saved.get("fingerprint") == fingerprint:
            return {**saved, "status": "skipped"}
    if folder.exists():
        prior = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        if prior != fingerprint:
            say(f"  settings of {cell.id} changed since its folder was written: restarting it")
            shutil.rmtree(folder)
        else:
            ckpt = latest_checkpoint(folder)
            if ckpt is not None and read_meta(ckpt).get("fingerprint") != cell.config.fingerprint():
                say(f"  checkpoints of {cell.id} belong to other settings: restarting it")
                shutil.rmtree(folder / "checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps({"id": cell.id, "fingerprint": fingerprint,
                                          "config": cell.config.model_dump(mode="json")}, indent=1))
    resumed = latest_checkpoint(folder) is not None
    t0 = time.perf_counter()
    try:
        final = distill(cell.config, show_progress=show_progress)
    finally:
        _reset_accelerate()
    seconds = time.perf_counter() - t0
    eval_path = final / "eval.json"
    if eval_path.is_file():
        scored = json.loads(eval_path.read_text())
    else:  # an export without eval.json: score it here, the same way
        from ..evaluate import evaluate_file
        from ..student import load_student

        model, tok = load_student(f"hf:{final}")
        scored = evaluate_file(model, tok, cell.config.eval_data)
    last = _last_metrics(folder)
    record = {"id": cell.id, "fingerprint": fingerprint, "values": {k: v for k, v in cell.values.items()},
              "teachers": cell.teachers, "labels": cell.labels, "bpb": scored["bpb"], "bytes": scored["bytes"],
              "tokens": scored.get("tokens"), "final_loss": last.get("loss"), "steps": cell.config.steps,
              "seconds": round(seconds, 1), "export": str(final)}
    write_atomic(result_path, json.dumps(record, indent=1, default=str))
    return {**record, "status": "resumed" if resumed else "ran"}


@dataclass
class AblationResult:
    out: Path
    cells: list[Cell]
    rows: list[dict]
    teachers: list[dict]
    files: dict[str, Path]


def run_ablation(config: AblationConfig | Path | str, out: Path | str, *, console=None, show_progress: bool = True,
                 dry_run: bool = False) -> AblationResult | Plan:
    """Run every cell of the ablation (resuming / skipping finished ones) and write the reports.

    ``dry_run`` validates everything that can be checked without running (the config, every cell's settings,
    the data specs) and returns the :class:`Plan`.
    """
    from rich.console import Console

    from .report import print_plan, print_table, write_reports

    console = console or Console()
    cfg = config if isinstance(config, AblationConfig) else load_ablation(config)
    out = Path(out)
    plan = make_plan(cfg, out)
    if isinstance(cfg.base.get("data"), str) and isinstance(cfg.base.get("eval_data"), str):
        check_disjoint(cfg.base["data"], cfg.base["eval_data"])
    if dry_run:
        print_plan(plan, console)
        return plan

    say = console.print
    start = time.perf_counter()
    # 1. data slices
    specs = {v for c in [cfg.base, *cfg.cells] for k, v in c.items() if k in PATH_FIELDS and isinstance(v, str)}
    specs |= {v for k, vs in cfg.grid.items() if k in PATH_FIELDS for v in vs if isinstance(v, str)}
    if cfg.sample_eval is not None:
        specs.add(cfg.sample_eval.prompts)
    for spec in sorted(s for s in specs if is_asset(s)):
        materialize(spec, out)
    for cell in plan.cells:
        for key in PATH_FIELDS:
            value = getattr(cell.config, key)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"cell {cell.id}: {key} file {value} does not exist")

    # 2. one cache per group, views per subset
    device = _resolve_device(cfg.teacher_device)
    cache_idents: dict[str, dict] = {}
    for slug, group in plan.groups.items():
        from ..cache import read_manifest

        from .cache_views import cache_identity, ensure_union_cache, subset_view

        say(f"[bold]teacher cache[/] {group['path']}: {', '.join(group['specs'])} over {group['data'].name} "
            f"(captured once, reused by every cell)")
        ensure_union_cache(group["path"], group["specs"], group["data"], seq_bytes=group["seq_bytes"],
                           top_k=cfg.cache.top_k, tail=cfg.cache.tail, shard_chunks=cfg.cache.shard_chunks,
                           max_length=group["max_length"], byte_rule=group["byte_rule"], device=device,
                           console=console, show_progress=show_progress, owned=cfg.cache.path is None)
        manifest = read_manifest(group["path"])
        for cell in plan.cells:
            if plan.cell_group.get(cell.id) != slug:
                continue
            view = subset_view(group["path"], group["views"] / "+".join(cell.labels), cell.teachers)
            cell.config = type(cell.config)(**{**cell.config.model_dump(), "cache": view})  # validated again
            cache_idents[cell.id] = cache_identity(manifest, cell.teachers)

    # 3. teacher reference lines
    teachers: list[dict] = []
    if cfg.teacher_eval:
        labels = plan.labels
        max_length = int(cfg.base.get("teacher_max_length", 1024))
        for eval_file in plan.eval_files:
            for spec in plan.teachers:
                teachers.append(_teacher_reference(spec, labels[spec], eval_file, out, device, max_length, say))

    # 4. cells (+ the teachers' verdict on each cell's own samples when sample_eval is set)
    judge = None
    if cfg.sample_eval is not None:
        from .samples import SampleJudge

        prompts = cfg.sample_eval.prompts
        prompts_file = target_path(prompts, out) if is_asset(prompts) else Path(prompts)
        if not prompts_file.is_file():
            raise ConfigError(f"sample_eval.prompts: {prompts_file} does not exist")
        judge = SampleJudge(cfg.sample_eval, prompts_file, plan.teachers, device,
                            int(cfg.base.get("teacher_max_length", 1024)), say)
    rows: list[dict] = []
    files: dict[str, Path] = {}
    n = len(plan.cells)
    for i, cell in enumerate(plan.cells, 1):
        t0 = time.perf_counter()
        fingerprint = _fingerprint(cell, cache_idents.get(cell.id))
        say(f"[bold]cell {i}/{n}[/] {cell.id} — {cell.config.steps} steps (total elapsed "
            f"{_clock(time.perf_counter() - start)})")
        row = run_cell(cell, fingerprint, show_progress=show_progress, say=say)
        if judge is not None:
            row.update(judge.score(Path(cell.config.out), Path(row["export"])))
            say(f"  teacher-scored BPB of its own samples: {row['sample_bpb']:.4f}")
        rows.append(row)
        say(f"  {row['status']}: held-out {row['bpb']:.4f} bits/byte in {_clock(time.perf_counter() - t0)} "
            f"(total {_clock(time.perf_counter() - start)})")
        files = write_reports(plan, rows, teachers, png=False)  # partial results survive an interruption
    if judge is not None:
        judge.close()
    files = write_reports(plan, rows, teachers, png=True)
    print_table(plan, rows, teachers, console)
    say(f"results: {', '.join(str(p) for p in files.values())} ({_clock(time.perf_counter() - start)})")
    return AblationResult(out, plan.cells, rows, teachers, files)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


__all__ = ["AblationResult", "Plan", "make_plan", "run_ablation", "run_cell"]
