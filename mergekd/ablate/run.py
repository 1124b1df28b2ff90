"""Running an ablation: data slices → one teacher cache → teacher reference BPB → every cell → reports.

Why this order: the teacher forward passes are the slow part on small hardware (~500 bytes/s for two small
teachers on 2 CPU cores), so they happen once, up front, for the union of the grid's teachers; every cell then
trains from a view of that cache with no teacher in memory. Teacher reference BPB is computed before the cells so
that an interrupted grid still has its reference lines.

Rerun = resume, and no finished work is deleted. A cell has two keys (:class:`CellKey`): its *training*
fingerprint (everything that changes the trained weights — its settings less steps and eval_data, the *content*
of its data files, the cache's capture options and teacher weights) and its *evaluation* key (the held-out
text's content and the scoring settings). Recorded in ``OUT/cells/<id>/result.json``, they decide what a rerun
does: both equal → skipped; only the evaluation key differs → the existing export ``final/`` is re-scored, not
retrained; more steps → the distill loop resumes from the last checkpoint. A cell whose training settings changed
(or whose steps were lowered: a model cannot be un-trained) has its old folder moved aside (``<id>.old-1``, see
:func:`mergekd.io.move_aside`) and is trained afresh; checkpoints of other settings, and an export that training
is about to replace, are moved aside the same way. Every move is said in one line. All result files are written
atomically.

Seeds: with ``seeds: [0, 1, 2]`` every cell trains once per seed, each (cell, seed) run in its own folder
``OUT/cells/<id>/seed-<s>/`` (one seed keeps ``OUT/cells/<id>/``, see :mod:`mergekd.ablate.layout`), and every
rule above holds per run: a run is one "cell" to :func:`run_cell`, with the seed in its training fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache.identity import sha256_file
from ..io import move_aside, write_atomic, write_json
from ..errors import ConfigError
from .config import PATH_FIELDS, AblationConfig, Cell, expand_cells, load_ablation
from .data import check_disjoint, is_asset, materialize, target_path
from .plan import Plan

FINGERPRINT_EXCLUDE = {"out", "cache", "device", "save_every", "keep_checkpoints", "log_every", "report_to",
                       *PATH_FIELDS}
# How a held-out text is scored (mergekd.evaluate.evaluate_file): part of the evaluation key, so a change in
# the measure re-scores every cell, and passed explicitly when a cell is re-scored.
SCORING = {"measure": "token-nll-bpb", "chunk_bytes": 1024, "limit_bytes": None}


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def _teacher_reference(spec: str, label: str, eval_file: Path, out: Path, device: str, max_length: int | None,
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


@dataclass(frozen=True)
class CellKey:
    """What a cell's recorded result depends on, in two parts, so that a rerun redoes only what changed.

    ``training`` names the trained weights and ``evaluation`` the score of those weights on the held-out text;
    ``steps`` is kept apart because more steps extend a run (the loop resumes) rather than change it. ``legacy``
    is the single fingerprint that folders written before the split recorded: it still counts as finished, so an
    upgrade of mergekd retrains nothing."""

    training: str
    evaluation: str
    steps: int
    legacy: str = ""

    def trained(self, fingerprint: str | None) -> bool:
        """Whether a recorded fingerprint names this training."""
        return fingerprint is not None and fingerprint in (self.training, self.legacy)


def _digest(payload: Any) -> str:
    """Short, order-independent hash of a JSON-able payload (keys sorted, so dict order never changes it)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cell_key(cell: Cell, cache_ident: dict | None) -> CellKey:
    """The cell's :class:`CellKey`.

    The settings part is DistillConfig's own fingerprint (it leaves out steps, eval_data, device and output
    paths), so a new setting that changes training changes it here too. File and cache *paths* are replaced by
    their contents, so a moved output folder is still finished. With a cache, fit_data is not read (the mixer is
    fitted on cached chunks), so it is left out."""
    c = cell.config
    fit = c.fit_data if c.fit_data is not None and cache_ident is None else None
    settings = c.model_copy(update={"data": "data", "fit_data": None, "cache": None}).fingerprint()
    training = _digest({"settings": settings, "data_sha256": sha256_file(Path(c.data)),
                        "fit_data_sha256": sha256_file(Path(fit)) if fit is not None else None,
                        "cache": cache_ident})
    evaluation = _digest({"eval_sha256": sha256_file(Path(c.eval_data)), **SCORING})
    return CellKey(training, evaluation, c.steps, _legacy_fingerprint(cell, cache_ident))


def _legacy_fingerprint(cell: Cell, cache_ident: dict | None) -> str:
    """The one fingerprint results recorded before :class:`CellKey` (settings with steps, and every data file's
    content, eval_data included): kept only to recognise those results as finished."""
    c = cell.config
    fields = c.model_dump(mode="json", exclude=FINGERPRINT_EXCLUDE)
    for key in PATH_FIELDS:
        value = getattr(c, key)
        fields[f"{key}_sha256"] = sha256_file(Path(value)) if value is not None and not (
            key == "fit_data" and cache_ident is not None) else None
    fields["cache"] = cache_ident
    return _digest(fields)


def _reset_accelerate() -> None:
    """``accelerate`` keeps a process-wide state that refuses a second Accelerator with other settings (e.g. a
    mixed_precision axis); clear it between cells. The distributed part (PartialState) is kept.

    accelerate (1.x) has no public call for this, only the private ``AcceleratorState._reset_state``. Without
    that hook the grid still works for cells with equal accelerator settings, so only its absence is tolerated;
    a failure of the hook itself is raised."""
    from accelerate.state import AcceleratorState

    try:
        reset = AcceleratorState._reset_state
    except AttributeError:
        return
    reset()


def _read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when the file is absent (a cell not yet trained or scored)."""
    return json.loads(path.read_text()) if path.is_file() else None


def _last_metrics(folder: Path) -> dict:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def _write_marker(cell: Cell, key: CellKey) -> None:
    """``cell.json``: the training the folder holds, written before training so an interrupted cell is known."""
    write_json(Path(cell.config.out) / "cell.json", {"id": cell.id, "fingerprint": key.training,
                                                     "config": cell.config.model_dump(mode="json")})


def _write_result(cell: Cell, record: dict) -> None:
    """``result.json``, atomically: a cell is finished exactly when this file holds its keys."""
    write_atomic(Path(cell.config.out) / "result.json", json.dumps(record, indent=1, default=str))


def _score(final: Path, eval_file: Path) -> dict:
    """Held-out BPB of an export, measured as the distill export measures it (see SCORING)."""
    from ..evaluate import evaluate_file
    from ..student import load_student

    model, tok = load_student(f"hf:{final}")
    return evaluate_file(model, tok, eval_file, chunk_bytes=SCORING["chunk_bytes"],
                         limit_bytes=SCORING["limit_bytes"])


def _score_fields(scored: dict) -> dict:
    """The score part of a result record, the same whether the export or a re-score measured it."""
    return {"bpb": scored["bpb"], "bytes": scored["bytes"], "tokens": scored.get("tokens")}


def run_cell(cell: Cell, key: CellKey, *, show_progress: bool, say) -> dict:
    """Run, resume, re-score or skip one cell; returns its result record (``status``: ran, resumed, re-scored
    or skipped). Trained weights are never deleted (see the module docstring)."""
    folder = Path(cell.config.out)
    saved = _read_json(folder / "result.json")
    if saved is not None and key.trained(saved.get("fingerprint")) and saved.get("steps") == key.steps:
        if saved.get("eval_key") == key.evaluation or saved["fingerprint"] == key.legacy:
            return {**_upgrade(cell, key, saved), "seed": cell.config.seed, "status": "skipped"}
        if (folder / "final").is_dir():
            return _rescore(cell, key, saved, say)
    _make_room(cell, key, saved, say)
    return _train(cell, key, show_progress)


def _upgrade(cell: Cell, key: CellKey, saved: dict) -> dict:
    """A result recorded before the training/evaluation split matched its legacy fingerprint (same training,
    same held-out text): record both keys now, so a later change of eval_data re-scores it, not retrains it.
    A run moved to another folder (one seed ↔ several, :mod:`mergekd.ablate.layout`) records its export's new
    place the same way."""
    export = str(Path(cell.config.out) / "final")
    if saved["fingerprint"] == key.training and saved.get("eval_key") == key.evaluation and \
            saved.get("export", export) == export:
        return saved
    record = {**saved, "fingerprint": key.training, "eval_key": key.evaluation, "export": export}
    _write_marker(cell, key)
    _write_result(cell, record)
    return record


def _rescore(cell: Cell, key: CellKey, saved: dict, say) -> dict:
    """Only the held-out text (or the scoring) changed: score the existing export on it. The export is only
    read, so ``final/`` keeps its files (same inodes); the training record (loss, steps, seconds) is kept."""
    final = Path(cell.config.out) / "final"
    say(f"  held-out text of {cell.name} changed: re-scoring its export {final} (no retraining)")
    record = {**saved, **_score_fields(_score(final, Path(cell.config.eval_data))), "fingerprint": key.training,
              "eval_key": key.evaluation, "export": str(final)}
    _write_marker(cell, key)
    _write_result(cell, record)
    return {**record, "seed": cell.config.seed, "status": "re-scored"}


def _aside(path: Path, why: str, say) -> Path:
    """Move ``path`` to a free ``NAME.old-N`` sibling and say so in one line: what moved, where, and why."""
    aside = move_aside(path, "old")
    say(f"  {why}: moved {path} to {aside} (kept, not deleted)")
    return aside


def _make_room(cell: Cell, key: CellKey, saved: dict | None, say) -> None:
    """Before training, move aside what in the cell's folder belongs to other training, so the loop neither
    resumes it with the wrong settings nor overwrites it: the whole folder when the training settings changed
    or the steps were lowered (a model cannot be shortened), the checkpoints when they were written with other
    settings, and an export that the coming steps would replace."""
    from ..distill.checkpoint import latest_checkpoint, read_meta

    folder = Path(cell.config.out)
    if not folder.exists():
        return
    if not key.trained((_read_json(folder / "cell.json") or {}).get("fingerprint")):
        _aside(folder, f"training settings of {cell.name} changed since it was trained", say)
        return
    ckpt = latest_checkpoint(folder)
    if ckpt is not None and read_meta(ckpt).get("fingerprint") != cell.config.fingerprint():
        _aside(folder / "checkpoints", f"checkpoints of {cell.name} belong to other settings", say)
        ckpt = None
    done = int(read_meta(ckpt)["step"]) if ckpt is not None else 0
    recorded = saved.get("steps", 0) if saved is not None and key.trained(saved.get("fingerprint")) else 0
    if max(done, recorded) > key.steps:
        _aside(folder, f"{cell.name} was trained for {max(done, recorded)} steps, more than steps={key.steps}",
               say)
    elif done < key.steps and (folder / "final").is_dir():
        _aside(folder / "final", f"training {cell.name} to {key.steps} steps will replace its export", say)


def _train(cell: Cell, key: CellKey, show_progress: bool) -> dict:
    """Train the cell, or resume it from its last checkpoint, and record its score with both keys."""
    from ..distill import distill
    from ..distill.checkpoint import latest_checkpoint

    folder = Path(cell.config.out)
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(cell, key)
    resumed = latest_checkpoint(folder) is not None
    t0 = time.perf_counter()
    try:
        final = distill(cell.config, show_progress=show_progress)
    finally:
        _reset_accelerate()
    seconds = time.perf_counter() - t0
    # the export's eval.json was measured on this cell's eval_data; an export without one is scored here
    scored = _read_json(final / "eval.json") or _score(final, Path(cell.config.eval_data))
    record = {"id": cell.id, "seed": cell.config.seed, "fingerprint": key.training, "eval_key": key.evaluation,
              "values": dict(cell.values),
              "teachers": cell.teachers, "labels": cell.labels, **_score_fields(scored),
              "final_loss": _last_metrics(folder).get("loss"), "steps": cell.config.steps,
              "seconds": round(seconds, 1), "export": str(final)}
    _write_result(cell, record)
    return {**record, "status": "resumed" if resumed else "ran"}


@dataclass
class AblationResult:
    """``rows``: one record per (cell, seed) run (``id``, ``seed``, ``bpb``, ``status`` ...), seed-major;
    ``table``: one row per cell as the reports show it (mean, sd and 95% interval over seeds when several)."""

    out: Path
    cells: list[Cell]
    rows: list[dict]
    teachers: list[dict]
    files: dict[str, Path]
    seeds: list[int] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)


def run_ablation(config: AblationConfig | Path | str, out: Path | str, *, console=None, show_progress: bool = True,
                 dry_run: bool = False) -> AblationResult | Plan:
    """Run every cell of the ablation (resuming / re-scoring / skipping finished ones) and write the reports.

    ``dry_run`` validates everything that can be checked without running or writing (the config, every cell's
    settings, mixer, teacher and student specs, the data files) and returns the :class:`Plan`.
    """
    from rich.console import Console

    from .report import print_plan, print_table, table_rows, write_reports

    console = console or Console()
    cfg = config if isinstance(config, AblationConfig) else load_ablation(config)
    out = Path(out)
    plan = make_plan(cfg, out)
    if isinstance(cfg.base.get("data"), str) and isinstance(cfg.base.get("eval_data"), str):
        check_disjoint(cfg.base["data"], cfg.base["eval_data"])
    if dry_run:
        _check_files(plan, pending={target_path(s, out) for s in _data_specs(cfg) if is_asset(s)})
        print_plan(plan, console)
        return plan

    say = console.print
    start = time.perf_counter()
    for spec in sorted(s for s in _data_specs(cfg) if is_asset(s)):  # 1. data slices
        materialize(spec, out)
    _check_files(plan, pending=set())
    device = _resolve_device(cfg.teacher_device)
    cache_idents = _prepare_caches(plan, cfg, device, console, show_progress)  # 2. one cache per group
    teachers = _teacher_references(plan, cfg, device, say) if cfg.teacher_eval else []  # 3. reference lines
    rows = _run_cells(plan, cache_idents, teachers, _sample_judge(plan, cfg, device, say),  # 4. cells
                      show_progress=show_progress, say=say, start=start)
    files = write_reports(plan, rows, teachers, png=True)
    print_table(plan, rows, teachers, console)
    say(f"results: {', '.join(str(p) for p in files.values())} ({_clock(time.perf_counter() - start)})")
    table = [{k: v for k, v in r.items() if not k.startswith("_")} for r in table_rows(plan, rows)[1]]
    return AblationResult(out, plan.cells, rows, teachers, files, plan.seeds, table)


def _data_specs(cfg: AblationConfig) -> set[str]:
    """Every data spec the config names (base, grid axes, extra cells, sample_eval prompts)."""
    specs = {v for c in [cfg.base, *cfg.cells] for k, v in c.items() if k in PATH_FIELDS and isinstance(v, str)}
    specs |= {v for k, vs in cfg.grid.items() if k in PATH_FIELDS for v in vs if isinstance(v, str)}
    if cfg.sample_eval is not None:
        specs.add(cfg.sample_eval.prompts)
    return specs


def _check_files(plan: Plan, *, pending: set[Path]) -> None:
    """Every cell's data files exist (``pending``: asset slices a dry run has not written yet)."""
    for cell in plan.cells:
        for key in PATH_FIELDS:
            value = getattr(cell.config, key)
            if value is not None and Path(value) not in pending and not Path(value).is_file():
                raise ConfigError(f"ablation cell {cell.id}: {key} file {value} does not exist")


def _prepare_caches(plan: Plan, cfg: AblationConfig, device: str, console, show_progress: bool) -> dict[str, dict]:
    """Capture (or reopen) each group's union cache and point its cells at a view of their subset; returns each
    cached cell's cache identity (part of its training fingerprint)."""
    from ..cache import read_manifest
    from .cache_views import cache_identity, ensure_union_cache, subset_view

    idents: dict[str, dict] = {}
    for slug, group in plan.groups.items():
        console.print(f"[bold]teacher cache[/] {group['path']}: {', '.join(group['specs'])} over "
                      f"{group['data'].name} (captured once, reused by every cell)")
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
            idents[cell.id] = cache_identity(manifest, cell.teachers)
    return idents


def _teacher_references(plan: Plan, cfg: AblationConfig, device: str, say) -> list[dict]:
    """Each teacher's own BPB on each held-out text: the reference lines of the report (saved, so reused)."""
    labels = plan.labels
    max_length = cfg.base.get("teacher_max_length")  # None: the teacher's own window, as everywhere else
    return [_teacher_reference(spec, labels[spec], eval_file, plan.out, device, max_length, say)
            for eval_file in plan.eval_files for spec in plan.teachers]


def _sample_judge(plan: Plan, cfg: AblationConfig, device: str, say):
    """The teachers' verdict on each cell's own samples, when ``sample_eval`` is set (else None)."""
    if cfg.sample_eval is None:
        return None
    from .samples import SampleJudge

    prompts = cfg.sample_eval.prompts
    prompts_file = target_path(prompts, plan.out) if is_asset(prompts) else Path(prompts)
    if not prompts_file.is_file():
        raise ConfigError(f"sample_eval.prompts: {prompts_file} does not exist")
    return SampleJudge(cfg.sample_eval, prompts_file, plan.teachers, device,
                       cfg.base.get("teacher_max_length"), say)


def _run_cells(plan: Plan, cache_idents: dict[str, dict], teachers: list[dict], judge, *, show_progress: bool,
               say, start: float) -> list[dict]:
    """Every (cell, seed) run — grid order, one pass per seed (:meth:`Plan.runs`); the reports are rewritten
    after each, so an interrupted grid keeps its rows. Returns one record per run (``id`` and ``seed``)."""
    from .layout import arrange
    from .report import write_reports

    for cell in plan.cells:  # one seed ↔ several: move finished runs to their folders before anything runs
        arrange(Path(cell.config.out), plan.seeds, plan.nested, cell.id, say)
    runs = plan.runs()
    what = "run" if plan.nested else "cell"
    rows: list[dict] = []
    try:
        for i, run in enumerate(runs, 1):
            t0 = time.perf_counter()
            key = cell_key(run, cache_idents.get(run.id))
            say(f"[bold]{what} {i}/{len(runs)}[/] {run.name} — {run.config.steps} steps (total elapsed "
                f"{_clock(time.perf_counter() - start)})")
            row = run_cell(run, key, show_progress=show_progress, say=say)
            if judge is not None:
                row.update(judge.score(Path(run.config.out), Path(row["export"])))
                say(f"  teacher-scored BPB of its own samples: {row['sample_bpb']:.4f}")
            rows.append(row)
            say(f"  {row['status']}: held-out {row['bpb']:.4f} bits/byte in {_clock(time.perf_counter() - t0)} "
                f"(total {_clock(time.perf_counter() - start)})")
            write_reports(plan, rows, teachers, png=False)
    finally:
        if judge is not None:
            judge.close()
    return rows


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


__all__ = ["AblationResult", "CellKey", "Plan", "cell_key", "make_plan", "run_ablation", "run_cell"]
