"""DistillConfig: every knob of ``mergekd distill``, validated once at the edge (YAML file and CLI flags).

The config is composed of section models (:data:`SECTIONS`: run, data, student, teacher, mix, objective,
optimiser, on_policy), each holding its fields and the validators of their grammar (data specs, student and
teacher specs, mixer, byte head, byte rule, devices, trackers, objective terms), so a section can be validated
and reused on its own; :class:`DistillConfig` composes them (fields stay flat attributes: ``cfg.lr``) and checks
the rules that span sections (teacher terms need teachers, caches refuse on-policy, ...). YAML may nest the
sections or keep flat keys; flags are the flat names; ``--help`` groups options by section.

Defaults follow our measurements (``recipe: trie``): with teachers, the token-trie term alone at weight 3 — the
best of 1, 3 and 10 on the demo, and in the small ablation every token-trie cell beat CE-only while the BLD byte
head (λ_b = 1, λ_kl = 0.1, as reported second-hand for Byte-Level Distillation, arXiv 2604.07466) did not.
``recipe: bld`` restores BLD's defaults (K = 10 byte offsets, forward KL at temperature 1). CE-only training is
the same config without teachers (``--ce-only``).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError, UnknownNameError, one_line
from ..teachers.runtime import TeacherRuntime as RUNTIME


# The weight flags that expand into the objective's term list when no explicit ``objective`` is given.
OBJECTIVE_FLAGS = ("recipe", "token_ce_weight", "byte_ce_weight", "kl_weight", "trie_kl_weight", "trie_kl_depth", "kl_loss",
                   "temperature")


class RunSection(BaseModel):
    """Run and output: where the run writes, how long it trains, logging, seed and the student's device."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(..., description="output folder (checkpoints/, metrics.jsonl, final/); rerun to resume")
    steps: int = Field(100, ge=1, description="optimizer steps (raise it and rerun to train further)")
    save_every: int = Field(50, ge=1, description="steps between checkpoints (and at the last step)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk (older ones are removed)")
    log_every: int = Field(1, ge=1, description="steps between metrics.jsonl lines")
    report_to: list[str] = Field(default_factory=list, description="experiment trackers, comma-separated: "
                                 "tensorboard (events in OUT/tensorboard/), wandb, trackio, none; each needs its "
                                 "package (pip install 'mergekd[track]' for tensorboard)")

    seed: int = Field(0, description="seed of initialisation and data order (a pure function of seed and step)")

    device: str = Field("auto", description="student device: auto (cuda when available), cpu, cuda, cuda:N, mps; "
                        "a device this machine lacks is refused")
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = Field(
        "auto", description="autocast of the student: auto = bf16 on a GPU that supports it, else no")

    @field_validator("device")
    @classmethod
    def _available_device(cls, v: str) -> str:
        from ..devices import check_device

        return check_device(v, "device")


    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, v):
        from .trackers import check_report_to

        return check_report_to(v)



class DataSection(BaseModel):
    """Data: what the student trains on, is evaluated on and how texts are cut."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(..., description="training data spec, streamed: a .txt/.jsonl/.json/.parquet/.csv/.arrow "
                      "file, a save_to_disk folder, a glob of shards (data/*.parquet) or hub:owner/name, with "
                      "?text_field=, ?prompt_field=/?response_field= (loss on the response only), ?messages_field= "
                      "(chats), ?shuffle_buffer=N (default 10000 chunks; 0 = stream order); see docs/data.md")
    eval_data: str | None = Field(None, description="held-out text (a data spec like data): the export's BPB "
                                                    "goes in its model card")
    fit_data: str | None = Field(None, description="text (a data spec like data) a learning mixer is fitted on "
                                                   "(online teachers only; read whole)")
    seq_bytes: int = Field(512, ge=16, description="bytes per training text chunk")
    prompt_bytes: int = Field(64, ge=1, description="prompt length in bytes: the start of a plain-text chunk, "
                                                    "the end of a long prompt/response prompt")


    @field_validator("data", "eval_data", "fit_data", mode="before")
    @classmethod
    def _data_spec(cls, v, info):
        if v is None:
            return v
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, dict):  # YAML: {path: data/*.parquet, text_field: body}
            from ..sources import build_source

            return build_source(v, info.field_name).to_spec()
        if not isinstance(v, str):
            raise ValueError(f"a data spec is a string or a mapping, got {type(v).__name__}")
        from ..sources import parse_source

        parse_source(v, info.field_name)  # grammar and options only; the files are opened when the run starts
        return v



class StudentSection(BaseModel):
    """Student: the model being trained and the byte head that may ride on it."""

    model_config = ConfigDict(extra="forbid")

    student: str = Field(..., description="student spec: new:llama?tokenizer=gpt2&layers=4, hf:PATH, gguf:PATH")
    byte_head: str = Field("parallel", description="byte head from the byte-head registry: parallel (BLD, alias "
                           "bld), recurrent, or a plugin's name")
    byte_offsets: int = Field(10, ge=1, le=64, description="K: bytes of each student token the byte head and "
                              "the trie term supervise")
    lora_rank: int = Field(0, ge=0, description="0 = full fine-tuning; >0 trains LoRA adapters (needs peft)")

    @field_validator("student")
    @classmethod
    def _known_student(cls, v: str) -> str:
        from ..student.spec import parse_student_spec

        parse_student_spec(v)  # grammar only: nothing is loaded
        return v


    @field_validator("byte_head")
    @classmethod
    def _known_byte_head(cls, v: str) -> str:
        from ..student.byte_head import BYTE_HEADS

        with registry_miss_as_value_error():
            return BYTE_HEADS.canonical(v)  # aliases and plugins resolve; a typo lists the known heads



class TeacherSection(BaseModel):
    """Teachers: where teacher rows come from (online teachers or a byte cache) and how teachers run."""

    model_config = ConfigDict(extra="forbid")

    teachers: list[str] = Field(default_factory=list, description="teacher specs, comma-separated on the command "
                                "line (smollm2-135m,gemma3-270m; hf:PATH_OR_ID; gguf:FILE); empty = CE-only training")
    cache: Path | None = Field(None, description="teacher byte cache from `mergekd cache` (no teacher in memory)")

    teacher_placement: Literal["device", "swap"] = Field(
        "device", description="device: every teacher stays on its device; swap: one at a time, the rest on the CPU")
    teacher_device: str | None = Field(None, description="device of the teachers' forward passes (default: the "
                                                         "student's device)")
    teacher_batch_size: int | None = RUNTIME.model_fields["teacher_batch_size"]  # one definition, shared
    teacher_max_length: int | None = RUNTIME.model_fields["teacher_max_length"]  # with every teacher command
    byte_rule: str = Field("canonical", description="every teacher's token → byte rule: canonical (fast) or "
                                                    "exact:K=8 (covering sum; short texts only)")

    @field_validator("byte_rule", mode="before")
    @classmethod
    def _known_rule(cls, v):
        from ..bytes.rule import parse_byte_rule

        return parse_byte_rule(v, "byte_rule").label()  # ConfigError naming the valid spellings


    @field_validator("teacher_device")
    @classmethod
    def _available_teacher_device(cls, v: str | None) -> str | None:
        from ..devices import check_device

        return None if v is None else check_device(v, "teacher_device")


    @field_validator("teachers", mode="before")
    @classmethod
    def _split_teachers(cls, v):
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v



class MixSection(BaseModel):
    """Mixing: how the teachers' next-byte distributions are combined."""

    model_config = ConfigDict(extra="forbid")

    mix: str | dict = Field("linear", description="mixer spec (linear, learned, product:weights=1;2) or, in "
                            "YAML, a mapping {name: linear, weights: [1, 2]}")

    @field_validator("mix", mode="before")
    @classmethod
    def _known_mix(cls, v):
        from ..mix import build_mixer

        with registry_miss_as_value_error():
            build_mixer(v)  # a typo stops here, before any teacher loads (with close matches)
        return v



class ObjectiveSection(BaseModel):
    """Objective: the loss: a list of registered terms, or the weight flags that expand into one."""

    model_config = ConfigDict(extra="forbid")

    objective: list[str | dict] | None = Field(
        None, description="the loss as a list of registered terms, e.g. [{term: token_ce}, {term: trie_kl, "
                          "weight: 3}] (CLI: --term trie_kl:weight=3, repeatable); when given it replaces the "
                          "weight flags (token_ce_weight, byte_ce_weight, kl_weight, trie_kl_*, kl_loss, temperature)")

    token_ce_weight: float = Field(1.0, ge=0, description="weight of the student's token CE")
    recipe: Literal["trie", "bld"] = Field(
        "trie", description="defaults of the teacher-term weights you do not set: trie = the token-trie term alone "
        "(trie_kl_weight 3; measured best: README 'Which objective term', every trie cell of the small ablation "
        "beat CE-only, the BLD byte head did not; into a pretrained student it beat CE fine-tuning by 0.011 bits/byte "
        "over 3 seeds when the teacher was the stronger model on the text, and lost by as much when it was not); "
        "bld = BLD's byte head (byte_ce_weight 1, kl_weight 0.1)")
    byte_ce_weight: float = Field(0.0, ge=0, description="λ_b: byte head CE on the text's bytes (default 0; 1 with "
                                  "--recipe bld, with teachers)")
    kl_weight: float = Field(0.0, ge=0, description="λ_kl: D(mixture ‖ byte head); needs teachers or a cache "
                             "(default 0; 0.1 with --recipe bld)")
    trie_kl_weight: float = Field(3.0, ge=0, description="λ_t: D(mixture ‖ the next-byte distribution the "
                                  "student's token softmax implies through its byte trie), which trains the token "
                                  "softmax itself (default 3 with teachers, the measured best of 1, 3, 10; 0 with "
                                  "--recipe bld)")
    trie_kl_depth: int = Field(0, ge=0, le=64, description="byte offsets of each student token the trie term "
                               "covers: 1 = the first byte only, 0 = every offset up to byte_offsets")
    kl_loss: str = Field("forward-kl", description="divergence of the KL terms: forward-kl, reverse-kl, jsd")
    temperature: float = Field(1.0, gt=0, description="softens both distributions in the KL terms")

    @field_validator("objective", mode="before")
    @classmethod
    def _known_terms(cls, v):
        if v is None:
            return v
        from ..objective import build_terms

        with registry_miss_as_value_error():
            terms = build_terms(v)  # names, options and duplicates checked here; a string may hold several terms
        return [t.spec() for t in terms]



class OptimiserSection(BaseModel):
    """Optimiser: batch, learning-rate schedule and AdamW."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1, description="global batch (texts per optimizer step, all processes)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (batch_size is split)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW; linear warm-up, cosine decay to 10%)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps before the cosine decay")


class OnPolicySection(BaseModel):
    """On-policy: on-policy distillation (GKD, Agarwal et al. 2024): the student writes the continuations it is trained on."""

    model_config = ConfigDict(extra="forbid")

    on_policy: float = Field(0.0, description="λ: fraction of batches whose continuations the student samples; "
                                              "0 = off, 1 = every batch")
    max_new_tokens: int = Field(64, ge=1, description="tokens the student samples per on-policy continuation")
    gen_temperature: float = Field(1.0, gt=0, description="sampling temperature of on-policy continuations")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass of on-policy continuations")

    @field_validator("on_policy", mode="before")
    @classmethod
    def _on_policy_fraction(cls, v):
        if isinstance(v, bool):  # YAML ``on_policy: true``
            return 1.0 if v else 0.0
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"must be a fraction of batches between 0 and 1 (0 = off, 1 = every batch), got {v!r}")
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"must be a fraction of batches between 0 and 1 (0 = off, 1 = every batch), got {f}; "
                             "use --on-policy 1 for fully on-policy training")
        return f



class DistillConfig(RunSection, DataSection, StudentSection, TeacherSection, MixSection, ObjectiveSection, OptimiserSection, OnPolicySection):
    """Every knob of ``mergekd distill``: the sections above, composed (YAML may nest them: ``run: {steps: 10}``,
    or keep the flat keys; flags are the flat names). Cross-section rules are checked here."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _flatten_sections(cls, raw):
        return flatten_sections(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _check(self):
        if self.trie_kl_depth > self.byte_offsets:
            raise ValueError(f"trie_kl_depth: {self.trie_kl_depth} byte offsets per token, but batches carry "
                             f"byte_offsets={self.byte_offsets}; raise --byte-offsets or lower --trie-kl-depth "
                             "(0 = all of them)")
        self._check_teacher_terms()
        if self.on_policy > 0:
            self._check_on_policy()
        if self.fit_data is not None:
            self._check_fit_data()
        from ..losses import LOSSES

        with registry_miss_as_value_error("kl_loss"):
            LOSSES.get(self.kl_loss)  # an unknown name lists close matches
        self._check_teacher_specs()
        return self

    @property
    def has_teacher_rows(self) -> bool:
        """Teachers or a byte cache supply rows (the only source of the KL and trie terms' targets)."""
        return bool(self.teachers) or self.cache is not None

    @property
    def uses_teacher_rows(self) -> bool:
        """A term reads the teachers' rows: only then are teachers loaded or a cache opened."""
        return self.has_teacher_rows and any(t.needs_teacher_rows and t.weight > 0 for t in self.terms())

    def terms(self):
        """The objective as term instances: the ``objective`` list, or the weight flags expanded into one."""
        from .objective import LossWeights, terms_from_weights

        if self.objective is not None:
            from ..objective import build_terms

            return build_terms(self.objective)
        return terms_from_weights(LossWeights(self.token_ce_weight, self.byte_ce_weight, self.kl_weight,
                                              self.kl_loss, self.temperature, self.trie_kl_weight,
                                              self.trie_kl_depth))

    def _check_objective_list(self) -> None:
        """An explicit term list replaces the weight flags: setting both is refused, and every term that reads
        teacher rows needs teachers (or a cache), and given teachers need a term that reads them."""
        flags = sorted(self.model_fields_set & set(OBJECTIVE_FLAGS))
        if flags:
            raise ValueError(f"objective: a term list replaces {', '.join(flags)}; set the weights inside the "
                             "list (e.g. {term: trie_kl, weight: 3}) or drop the list")
        terms = self.terms()
        readers = [t.name for t in terms if t.needs_teacher_rows and t.weight > 0]
        if readers and not self.has_teacher_rows:
            raise ValueError(f"objective: term {', '.join(readers)} reads teacher rows, but no teachers or cache "
                             "are given; add --teachers (or --cache) or drop the term")
        if self.has_teacher_rows and not readers:
            raise ValueError("objective: teachers are given but no term with weight > 0 reads their rows; add "
                             "e.g. {term: trie_kl, weight: 3} or drop the teachers")
        deepest = max((getattr(t.options, "depth", 0) for t in terms), default=0)
        if deepest > self.byte_offsets:
            raise ValueError(f"objective: a term covers {deepest} byte offsets per token, but batches carry "
                             f"byte_offsets={self.byte_offsets}; raise --byte-offsets or lower the depth")

    def _check_teacher_terms(self) -> None:
        """Teacher terms without teachers, or teachers that no term reads: refused, never silently dropped.

        Without teachers the *defaults* of the teacher terms (the recipe's weights) do not apply (a plain run is
        the CE-only baseline, as documented on the fields); a weight the user set is refused."""
        if self.objective is not None:
            return self._check_objective_list()
        explicit = set(self.model_fields_set)  # a copy: assigning a field below marks it as set
        if self.recipe == "bld":  # BLD's defaults for the weights not set (fields default to the trie recipe)
            for name, value in (("byte_ce_weight", 1.0), ("kl_weight", 0.1), ("trie_kl_weight", 0.0)):
                if name not in explicit:
                    setattr(self, name, value)
        if not self.has_teacher_rows:
            for name in ("kl_weight", "trie_kl_weight"):
                if name in explicit and getattr(self, name) > 0:
                    raise ValueError(f"{name}={getattr(self, name):g} needs teacher rows, but no teachers or cache "
                                     f"are given; add --teachers (or --cache), or set {name} 0 / use --ce-only")
            self.kl_weight = self.kl_weight if "kl_weight" in explicit else 0.0
            self.trie_kl_weight = self.trie_kl_weight if "trie_kl_weight" in explicit else 0.0
            if "byte_ce_weight" not in explicit:
                self.byte_ce_weight = 0.0
            return
        if self.kl_weight == 0 and self.trie_kl_weight == 0:
            given = "teachers" if self.teachers else "cache"
            raise ValueError(f"{given} given, but kl_weight and trie_kl_weight are both 0, so no term reads the "
                             "teachers' rows; set kl_weight or trie_kl_weight > 0, or drop the teachers")

    def _check_fit_data(self) -> None:
        """fit_data only feeds a mixer that learns, from online teachers; anywhere else it would be ignored."""
        if self.cache is not None:
            raise ValueError("fit_data: a byte cache holds teacher rows for the training chunks only, so fit_data "
                             "cannot be scored; drop --fit-data (the mixer then fits on the first 16 cached chunks) "
                             "or drop --cache (teachers run online)")
        from ..mix import build_mixer

        if not getattr(build_mixer(self.mix), "needs_fit", False):
            from ..mix import MIXERS

            learners = [name for name, kind in MIXERS.items() if getattr(kind, "needs_fit", False)]
            raise ValueError(f"fit_data: mixer {self.mix!r} learns nothing, so fit_data would be ignored; drop "
                             f"--fit-data or choose a mixer that learns ({', '.join(learners)})")

    def _check_teacher_specs(self) -> None:
        """Every teacher spec parses, names a registered teacher and its options validate (no weights load)."""
        from ..teachers.registry import resolve_teacher

        for spec in self.teachers:
            with registry_miss_as_value_error("teachers"):
                resolve_teacher(spec, self.teacher_overrides())

    def teacher_overrides(self) -> dict:
        """The teacher-runtime options this run sets for every teacher (a spec's own ``?options`` win)."""
        return {"max_length": self.teacher_max_length, "byte_rule": self.byte_rule,
                "batch_size": self.teacher_batch_size}

    def _check_on_policy(self) -> None:
        """On-policy batches train only the divergence to the teachers on the student's samples (see
        :mod:`mergekd.distill.onpolicy`), so they need live teachers and a divergence weight."""
        if self.cache is not None:
            raise ValueError("cache: a byte cache holds teacher targets for the training data only and cannot "
                             "cover text the student samples; drop --cache (teachers run online) or set "
                             "on_policy 0")
        if not self.teachers:
            raise ValueError("on_policy: on-policy batches are scored by teachers; give --teachers or set "
                             "on_policy 0")
        if not any(t.needs_teacher_rows and t.weight > 0 for t in self.terms()):
            raise ValueError("kl_weight: on-policy batches learn only from the teachers' divergence on the "
                             "student's samples, so kl_weight or trie_kl_weight (or a teacher term in the "
                             "objective) must be > 0 (or set on_policy 0)")
        if self.prompt_bytes >= self.seq_bytes:
            raise ValueError(f"prompt_bytes: {self.prompt_bytes} must be smaller than seq_bytes ({self.seq_bytes}) "
                             "so the continuation has room; lower --prompt-bytes")

    # ------------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of everything that changes the result; a resumed run must match it (steps may grow).

        The sampling fields change nothing while ``on_policy`` is 0, so they are left out then (runs from before
        on-policy training existed keep their fingerprint)."""
        generation = {"on_policy", "max_new_tokens", "gen_temperature", "top_p"}
        fields = self.model_dump(mode="json", exclude={"steps", "save_every", "keep_checkpoints", "log_every", "report_to", "recipe",
                                                       "out", "device", "eval_data", "teacher_device",
                                                       "teacher_batch_size",
                                                       *(generation if self.on_policy == 0 else ()),
                                                       *(("byte_rule",) if self.byte_rule == "canonical" else ()),
                                                       *(("trie_kl_weight", "trie_kl_depth")
                                                         if not self.trie_kl_weight else ()),
                                                       *(("objective",) if self.objective is None else
                                                         OBJECTIVE_FLAGS)})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def registry_miss_as_value_error(field: str | None = None):
    """A registry miss (UnknownNameError, with its did-you-mean) inside a validator becomes a ValueError, so the
    one-line config error names the field it came from (``kl_loss: unknown losses 'forwrd-kl'. Did you mean
    ...``); ``field`` is needed in model-level checks, where pydantic knows no field."""
    try:
        yield
    except UnknownNameError as exc:
        raise ValueError(f"{field}: {exc}" if field else str(exc)) from None


# The sections of a distillation config, in the order --help shows them: YAML key → (model, help panel title).
SECTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "run": (RunSection, "Run and output"), "data": (DataSection, "Data"), "student": (StudentSection, "Student"),
    "teacher": (TeacherSection, "Teachers"), "mix": (MixSection, "Mixing"),
    "objective": (ObjectiveSection, "Objective"), "optimiser": (OptimiserSection, "Optimiser"),
    "on_policy": (OnPolicySection, "On-policy"),
}


def section_of(field: str) -> str:
    """The section (YAML key) a flat field belongs to."""
    for key, (model, _) in SECTIONS.items():
        if field in model.model_fields:
            return key
    raise KeyError(field)


def flatten_sections(raw: dict) -> dict:
    """A config whose keys may be sections (``run: {steps: 10, out: runs/x}``) → the flat field mapping.

    Five sections share their name with a field (``data``, ``student``, ``mix``, ``objective``, ``on_policy``):
    their mapping is a section only when every key in it is a field of that section (``data: {data: a.txt,
    seq_bytes: 256}``), so ``data: {path: a.parquet, text_field: body}`` stays a data source and ``mix: {name:
    learned}`` a mixer. A field given both flat and inside its section is refused, as is a key a section does
    not hold (the message names the section it belongs to)."""
    flat = dict(raw)
    for key, (model, _) in SECTIONS.items():
        inner = raw.get(key)
        names = set(model.model_fields)
        if not isinstance(inner, dict) or not inner:
            continue
        if key in names and not set(inner) <= names:
            continue  # the field's own mapping form (a data source, a mixer)
        del flat[key]
        for name, value in inner.items():
            if name not in names:
                try:
                    home = f"; it belongs to section {section_of(name)!r}"
                except KeyError:
                    home = ""
                raise ValueError(f"{key}.{name}: not an option of section {key!r} (options: "
                                 f"{', '.join(model.model_fields)}){home}")
            if name in flat and name in raw and not (name == key):
                raise ValueError(f"{name}: given both at the top level and in section {key!r}; keep one")
            flat[name] = value
    return flat


def load_config(path: Path | None, overrides: dict) -> DistillConfig:
    """YAML file (optional) + CLI overrides (None values ignored) → validated DistillConfig.

    Errors name the field and say what is wrong, e.g. ``steps: Input should be greater than or equal to 1``.
    """
    data: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(Path(path).read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
    try:
        data = flatten_sections(data)  # before the flags, which win over the file
    except ValueError as exc:
        raise ConfigError(f"invalid distillation config — {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return DistillConfig(**data)
    except ValidationError as exc:
        raise one_line(exc, "invalid distillation config") from None
