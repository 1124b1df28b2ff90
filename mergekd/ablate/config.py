"""The ablation config: one typed model, validated at the edge, and its expansion into grid cells.

Why a separate schema instead of a list of distill configs: an ablation is *one* base run varied along a few
axes. Writing the base once and the axes as lists keeps the cells comparable by construction (every cell shares
data, student, steps, seed ... unless an axis says otherwise), and lets the expansion apply the rules that make a
grid honest: the CE-only baseline exists once (mixer, KL weight and byte-head axes mean nothing without teachers,
so they collapse instead of producing identical "baselines"), and a single teacher is not "mixed" by several
mixers (every mixer pools the teachers present at a byte; with one teacher each returns that teacher).

YAML schema (see ``configs/ablations/small.yaml``)::

    base:              # DistillConfig fields shared by every cell (not out, not cache)
      student: new:llama?tokenizer=mistral-v3&layers=2&hidden=128
      data: asset:botchan[0:40000]          # a file path, or an offline text slice (see mergekd.ablate.data)
      eval_data: asset:botchan[-16000:]     # required: every cell is scored on it
      steps: 200
    grid:              # axes: any DistillConfig field name, each a list of values; cells = Cartesian product
      teachers: [[smollm2-135m, gemma3-270m], smollm2-135m, gemma3-270m, none]   # [] / none = CE-only
      mix: [linear, learned]
      kl_weight: [0.1, 1.0]
    cells:             # optional extra cells: DistillConfig overrides on base (+ optional id)
      - {teachers: smollm2-135m, kl_weight: 2.0, id: smollm2-strong}
    seeds: [0, 1, 2]   # optional: every cell trains once per seed (DistillConfig.seed); default: base seed only
    cache: true        # true (default: capture once under OUT/cache) | false (teachers online) | PATH | mapping
    teacher_eval: true # each teacher's own held-out BPB as a reference line
    labels: {smollm2-135m: smol}   # optional short names for cell ids
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..distill.config import DistillConfig
from ..errors import ConfigError, MergekdError, one_line
from .data import is_asset, parse_asset, target_path

# Fields that only matter when there are teachers: a CE-only cell ignores them, so they do not split baselines.
TEACHER_ONLY = ("mix", "fit_data", "kl_weight", "byte_ce_weight", "trie_kl_weight", "trie_kl_depth", "byte_head",
                "byte_offsets", "kl_loss",
                "temperature", "teacher_placement", "teacher_max_length", "byte_rule",
                # on-policy distillation: the student's samples are scored by the teachers
                "on_policy", "max_new_tokens", "gen_temperature", "top_p", "prompt_bytes")
# Set by ablate itself: each cell's run folder and (when caching) its view of the shared teacher cache.
MANAGED = {"out": "each cell runs in OUT/cells/<cell id>; choose OUT with --out",
           "cache": "use the top-level `cache:` setting of the ablation config"}
# Not an axis and not a per-cell override: seeds repeat every cell (one way to say it, see AblationConfig.seeds).
SEED_HINT = ("seeds are not an axis: list them in the top-level `seeds: [0, 1, 2]` setting (every cell then trains "
             "once per seed, and the reports give the mean, sd and 95% interval over seeds)")
# Axes named first in cell ids and tables, in this order; other axes follow alphabetically.
AXIS_ORDER = ("teachers", "mix", "kl_weight", "byte_ce_weight", "trie_kl_weight", "byte_head")
ID_PREFIX = {"kl_weight": "kl", "byte_ce_weight": "bce", "token_ce_weight": "tce", "trie_kl_weight": "trie",
             "trie_kl_depth": "depth"}
CE_ONLY_ID = "ce-only"
PATH_FIELDS = ("data", "eval_data", "fit_data")
NONE_WORDS = {"", "none", "ce-only", "ce_only", "baseline"}


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_field_names(names, where: str) -> None:
    fields = DistillConfig.model_fields
    for name in names:
        if name in MANAGED:
            raise ValueError(f"{where}.{name}: set by ablate — {MANAGED[name]}")
        if name not in fields:
            raise ValueError(f"{where}.{name}: not a distill setting{_suggest(name, fields)} "
                             f"(valid: {', '.join(f for f in fields if f not in MANAGED)})")


def split_teachers(value: Any, where: str) -> list[str]:
    """One teacher subset: a list of specs or a comma string; ``[]``, ``none`` or ``ce-only`` = no teachers."""
    if value is None:
        return []
    if isinstance(value, str):
        if value.strip().lower() in NONE_WORDS:
            return []
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"{where}: teacher specs are strings, got {item!r}")
            if item.strip().lower() in NONE_WORDS:
                raise ValueError(f"{where}: {item!r} inside a teacher list; write `none` (or []) alone for the "
                                 "CE-only baseline")
            out.append(item.strip())
        return out
    raise ValueError(f"{where}: a teacher subset is a list of specs or a comma string, got {value!r}")


class SampleEvalSettings(BaseModel):
    """Teacher-scored BPB of each cell's own samples (issue 8): what on-policy training is meant to improve.

    Prompts are ``num_prompts`` pieces of ``prompt_bytes`` bytes spread evenly over ``prompts`` (a file or an
    ``asset:`` slice that should be held out); every cell's export continues them with the same sampling
    settings and seed, and the union of the grid's teachers, pooled by ``mix``, scores the continuation bytes.
    """

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(..., description="file or asset:NAME[a:b] the prompts are cut from")
    num_prompts: int = Field(16, ge=1)
    prompt_bytes: int = Field(64, ge=8)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    mix: str = "linear"
    seed: int = 0

    @field_validator("mix")
    @classmethod
    def _known_mix(cls, v: str) -> str:
        """A misspelt judge mixer fails with the config, not after every cell has trained."""
        from ..mix import parse_mix_spec

        try:
            parse_mix_spec(v)
        except MergekdError as exc:  # a registry miss is a KeyError: make it a field error pydantic reports
            raise ValueError(" ".join(str(exc).split())) from None
        return v


class CacheSettings(BaseModel):
    """Where and how the teacher byte cache of the grid is captured (once, for the union of its teachers)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    path: Path | None = Field(None, description="cache folder; default OUT/cache/<data>-<seq_bytes>-<hash>")
    top_k: int = Field(16, ge=1, le=255)
    tail: float = Field(1e-3, gt=0, lt=1)
    shard_chunks: int = Field(64, ge=1)
    max_length: int | None = Field(None, ge=16, description="teacher window in tokens; default base "
                                                             "teacher_max_length")


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    cells: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] | None = Field(None, description="train every cell once per seed (DistillConfig.seed); "
                                                      "default: the base seed only")
    cache: CacheSettings = Field(default_factory=CacheSettings)
    teacher_eval: bool = True
    teacher_device: str = Field("auto", description="device for cache capture and teacher BPB: auto, cpu, cuda")
    labels: dict[str, str] = Field(default_factory=dict, description="teacher spec → short name in cell ids")
    sample_eval: SampleEvalSettings | None = Field(
        None, description="also score each cell's own samples with the teachers (sample_bpb column)")

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_forms(cls, v):
        if v is None or v is True:
            return {}
        if v is False or (isinstance(v, str) and v.strip().lower() in ("off", "false", "no", "none")):
            return {"enabled": False}
        if isinstance(v, (str, Path)):
            return {"path": v}
        return v

    @field_validator("grid", mode="before")
    @classmethod
    def _axes_are_lists(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("grid must map axis names to lists of values, e.g. {kl_weight: [0.1, 1.0]}")
        out = {}
        for name, values in v.items():
            if not isinstance(values, list):
                values = [values]  # a scalar is a one-value axis
            if not values:
                raise ValueError(f"grid.{name}: empty list; give at least one value or drop the axis")
            out[name] = values
        return out

    @field_validator("seeds")
    @classmethod
    def _seeds_are_distinct(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("seeds: empty list; give at least one seed or drop the setting")
        if any(s < 0 for s in v):
            raise ValueError(f"seeds: {v} — seeds are non-negative integers")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds: {v} repeats a seed; each seed is one training run per cell")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_are_slugs(cls, v):
        for spec, label in v.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]+", label):
                raise ValueError(f"labels.{spec}: {label!r} may only use letters, digits, '.', '_' and '-'")
        return v

    @model_validator(mode="after")
    def _check(self):
        _check_field_names(self.base, "base")
        _check_field_names(self.grid, "grid")
        for i, cell in enumerate(self.cells):
            _check_field_names([k for k in cell if k != "id"], f"cells[{i}]")
        if "seed" in self.grid:
            raise ValueError(f"grid.seed: {SEED_HINT}")
        for i, cell in enumerate(self.cells):
            if "seed" in cell:
                raise ValueError(f"cells[{i}].seed: {SEED_HINT}")
        if self.seeds is not None and "seed" in self.base and self.base["seed"] not in self.seeds:
            raise ValueError(f"base.seed: {self.base['seed']!r} is not among seeds {self.seeds}; the seeds every "
                             "cell trains with are the `seeds:` list — drop base.seed or add it to seeds")
        for key in ("student", "data", "eval_data"):
            if self.base.get(key) in (None, ""):
                raise ValueError(f"base.{key}: required" + (" (held-out text: every cell is scored on it)"
                                                            if key == "eval_data" else ""))
        for key in PATH_FIELDS:
            for where, value in [("base", self.base.get(key)), *[(f"grid.{key}", v) for v in self.grid.get(key, [])]]:
                if isinstance(value, str) and is_asset(value):
                    parse_asset(value, f"{where}.{key}" if where == "base" else where)
        if "teachers" in self.grid:
            for j, subset in enumerate(self.grid["teachers"]):
                split_teachers(subset, f"grid.teachers[{j}]")
        return self


def _explain(err: dict, where: str) -> str | None:
    """Unknown keys of an ablation config list the valid ones (distill settings belong under base:)."""
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        keys = list(AblationConfig.model_fields)
        return f"unknown key{_suggest(where, keys)} (valid: {', '.join(keys)}; distill settings go under base:)"
    if err["type"] == "extra_forbidden" and err["loc"][0] == "cache":
        return f"unknown cache option (valid: {', '.join(CacheSettings.model_fields)})"
    return None


def format_errors(exc: ValidationError, source: str) -> str:
    return str(one_line(exc, f"invalid ablation config {source}", explain=_explain))


def parse_ablation(raw: Any, source: str = "(inline)") -> AblationConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"ablation config {source} must be a mapping with `base:` and `grid:`")
    try:
        return AblationConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None


def load_ablation(path: Path | str) -> AblationConfig:
    """YAML file → validated AblationConfig; every error names the field and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"ablation config {path} is not valid YAML: {exc}") from None
    return parse_ablation(raw, str(path))


# ------------------------------------------------------------------------------------------------------------
# Expansion


@dataclass
class Cell:
    """One grid point: a stable id, the axis values it shows, and the DistillConfig it runs (cache unset)."""

    id: str
    values: dict[str, Any]
    config: DistillConfig
    labels: list[str] = field(default_factory=list)  # short names of its teachers
    seed: int | None = None  # set on one seed's run of a multi-seed grid (see Plan.run); its config has that seed

    @property
    def name(self) -> str:
        """How messages name it: the cell id, plus the seed for one run of a multi-seed grid."""
        return self.id if self.seed is None else f"{self.id} (seed {self.seed})"

    @property
    def teachers(self) -> list[str]:
        return list(self.config.teachers)

    @property
    def ce_only(self) -> bool:
        return not self.config.teachers

    def shown(self, axis: str) -> str:
        """The axis value as the tables show it ("-" where the axis does not apply to this cell)."""
        if axis == "teachers":
            return "+".join(self.labels) if self.labels else "(none: CE only)"
        if axis not in self.values:
            return "-"
        return _fmt(self.values[axis])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def default_label(spec: str) -> str:
    """``smollm2-135m`` → ``smollm2-135m``; ``hf:/x/teacher-gpt2?max_length=64`` → ``teacher-gpt2``."""
    head = spec.split("?")[0]
    for prefix in ("hf:", "gguf:"):
        head = head.removeprefix(prefix)
    head = head.rstrip("/").split("/")[-1].removesuffix(".gguf")
    return _slug(head)


def teacher_labels(specs: list[str], given: dict[str, str]) -> dict[str, str]:
    """Short, unique names for ids: the part before the first '-' when that keeps every teacher of the config
    apart (``smollm2-135m`` → ``smollm2``), else the full name; ``labels:`` overrides either."""
    full = {s: given.get(s) or default_label(s) for s in specs}
    short = {s: given.get(s) or full[s].split("-")[0] or full[s] for s in specs}
    labels = short if len(set(short.values())) == len(specs) else full
    if len(set(labels.values())) != len(specs):  # two specs of the same model with other options
        labels = {s: labels[s] if list(labels.values()).count(labels[s]) == 1 else
                  f"{labels[s]}-{hashlib.sha256(s.encode()).hexdigest()[:6]}" for s in specs}
    return labels


def _axis_order(names) -> list[str]:
    first = [a for a in AXIS_ORDER if a in names]
    return first + sorted(n for n in names if n not in AXIS_ORDER)


def _id_part(axis: str, value: Any, labels: dict[str, str]) -> str:
    if axis == "teachers":
        return "+".join(labels[t] for t in value) if value else CE_ONLY_ID
    if axis in ("mix", "byte_head"):
        return _slug(str(value))
    if axis in PATH_FIELDS:
        return _slug(f"{axis}-{Path(str(value)).stem if not is_asset(str(value)) else str(value)[6:]}")
    return _slug(f"{ID_PREFIX.get(axis, axis)}{_fmt(value)}")


def resolve_path_value(value: Any, out: Path) -> Any:
    """``asset:NAME[a:b]`` → the file it will be written to under OUT/data; anything else unchanged."""
    if isinstance(value, str) and is_asset(value):
        return target_path(value, out)
    return value


def expand_cells(cfg: AblationConfig, out: Path) -> list[Cell]:
    """The grid's cells, in a stable order (grid product in axis order, then explicit ``cells:``).

    Each cell's DistillConfig is validated here, so a bad value fails before anything runs, naming the cell.
    """
    out = Path(out)
    base = {k: resolve_path_value(v, out) if k in PATH_FIELDS else v for k, v in cfg.base.items()}
    base_teachers = split_teachers(base.pop("teachers", None), "base.teachers")
    axes = dict(cfg.grid)
    if "teachers" not in axes:
        axes["teachers"] = [base_teachers]
    order = _axis_order(axes)
    raw: list[tuple[dict, list[str], str | None, str]] = []
    for combo in itertools.product(*(axes[a] for a in order)):
        raw.append((dict(zip(order, combo)), order, None, "grid"))
    for i, extra in enumerate(cfg.cells):
        values = {k: v for k, v in extra.items() if k != "id"}
        values.setdefault("teachers", base_teachers)
        names = _axis_order(set(order) | set(values))
        values = {**{a: base.get(a, DistillConfig.model_fields[a].default) for a in names if a not in values
                     and a != "teachers"}, **values}
        raw.append((values, names, extra.get("id"), f"cells[{i}]"))

    normalised = []
    for values, names, given_id, where in raw:
        teachers = split_teachers(values.get("teachers"), f"{where}.teachers")
        values = {k: resolve_path_value(v, out) if k in PATH_FIELDS else v for k, v in values.items()}
        values["teachers"] = teachers
        shown = dict(values)
        if not teachers:  # CE-only: teacher settings mean nothing, so they do not split the baseline
            for key in TEACHER_ONLY:
                shown.pop(key, None)
        elif len(teachers) == 1:  # one teacher: every mixer returns it
            shown.pop("mix", None)
        normalised.append((shown, [a for a in names if a in shown], given_id, where))
    specs = list(dict.fromkeys(t for shown, _, _, _ in normalised for t in shown["teachers"]))
    labels = teacher_labels(specs, cfg.labels)

    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    resolved: set[str] = set()  # teacher specs already checked
    for shown, names, given_id, where in normalised:
        teachers = shown["teachers"]
        fields = {**base, **{k: v for k, v in shown.items()}}
        if not teachers:  # one canonical baseline: teacher settings back to their defaults, no byte losses
            for key in TEACHER_ONLY:
                fields.pop(key, None)
            if "objective" in fields:  # a term list: the baseline keeps its token CE term only
                fields["objective"] = [t for t in fields["objective"] if _term_name(t) in ("token_ce", "token-ce", "ce")]
            else:
                fields.update(byte_ce_weight=0.0, kl_weight=0.0)
        elif len(teachers) == 1:
            fields["mix"] = "linear"
        cell_id = given_id or "__".join(_id_part(a, shown[a], labels) for a in names)
        if given_id is not None and not re.fullmatch(r"[A-Za-z0-9._+-]+", given_id):
            raise ConfigError(f"{where}.id: {given_id!r} may only use letters, digits, '.', '_', '+' and '-'")
        config = _cell_config(fields, out / "cells" / cell_id, f"ablation cell {cell_id} ({where})", resolved)
        key = json.dumps(config.model_dump(mode="json", exclude={"out"}), sort_keys=True)
        if key in seen:
            continue  # the same run twice (e.g. `none` and `[]`, or an explicit cell equal to a grid cell)
        if any(c.id == cell_id for c in cells):
            cell_id = f"{cell_id}~{hashlib.sha256(key.encode()).hexdigest()[:6]}"
            config = config.model_copy(update={"out": out / "cells" / cell_id})
        cell = Cell(cell_id, {a: shown[a] for a in names}, config, [labels[t] for t in teachers])
        seen[key] = cell
        cells.append(cell)
    return cells


def _cell_config(fields: dict, folder: Path, label: str, resolved: set[str]) -> DistillConfig:
    """One cell's validated DistillConfig; any bad value is one ConfigError naming the cell and the field.

    Why the spec strings are parsed here first: DistillConfig checks them too, but a registry miss (a misspelt
    mixer or teacher) is a KeyError that pydantic does not wrap, so it would surface without the cell or field.
    Nothing here loads weights or writes files, so ``--dry-run`` runs it for every cell."""
    from ..mix import build_mixer
    from ..student.spec import parse_student_spec
    from ..teachers.registry import resolve_teacher

    _check_one(label, "student", lambda: parse_student_spec(fields.get("student")))
    _check_one(label, "mix", lambda: build_mixer(fields.get("mix", "linear")))
    for spec in fields.get("teachers", []):
        if spec not in resolved:
            _check_one(label, "teachers", lambda: resolve_teacher(spec))
            resolved.add(spec)
    try:
        return DistillConfig(**{**fields, "out": folder})
    except ValidationError as exc:
        raise one_line(exc, label, separator=": ") from None
    except MergekdError as exc:  # e.g. an unknown kl_loss: the message names the value
        raise ConfigError(f"{label}: {' '.join(str(exc).split())}") from None


def _check_one(where: str, field: str, check) -> None:
    """Run one parse; its error becomes one ConfigError line naming the cell and the field (once: the student
    parser's messages already start with ``student:``)."""
    try:
        check()
    except MergekdError as exc:
        text = " ".join(str(exc).split())
        named = text if text.startswith(f"{field}:") else f"{field}: {text}"
        raise ConfigError(f"{where}: {named}") from None


def _term_name(spec) -> str:
    """The name in an objective entry: ``{term: NAME, ...}`` or ``"NAME:k=v"``."""
    return str(spec.get("term", "") if isinstance(spec, dict) else str(spec).partition(":")[0]).strip().lower()


def axes_of(cells: list[Cell]) -> list[str]:
    """Every axis any cell shows, in table order."""
    return _axis_order({a for c in cells for a in c.values} | {"teachers"})
