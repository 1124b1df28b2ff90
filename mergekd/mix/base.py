"""The Mixer contract, its typed config base, the MIXERS registry and save/load.

Why a base class: callers (``mergekd score``, the distillation loop, a byte cache) must treat every mixer alike:
``fit`` (a no-op for fixed mixers), ``__call__``, ``describe``, ``state_dict``/``load_state_dict``. The base
does the validation, the float64 preparation and the final renormalisation, so a subclass only decides
weights. Options are pydantic models (``extra="forbid"``) validated once, when the mixer is built.
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import ConfigError
from ..registry import Registry
from .inputs import MixerNotFittedError, MixInputError, MixInputs, check_shapes, prepare, require_actual
from .pool import normalise_rows

MIXERS: Registry = Registry("mixers", "mergekd.mixers")

STATE_FORMAT = 1


def _is_list_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return any(_is_list_annotation(arg) for arg in typing.get_args(annotation)) if origin is not None else False


class MixerConfig(BaseModel):
    """Base of every mixer's options. Unknown keys are errors; list options accept ``"a;b;c"`` strings.

    ';' separates list items because ',' already separates options in ``--mix NAME:k=v,k=v``; a YAML config
    may give a real list instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _split_list_strings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, field in cls.model_fields.items():
            value = data.get(key)
            if isinstance(value, str) and _is_list_annotation(field.annotation):
                data[key] = [part.strip() for part in value.split(";") if part.strip()]
        return data


class Mixer:
    """Combines K teachers' next-byte distributions [K, N, 257] into one [N, 257] (see the package docstring).

    Subclasses set ``name`` (their registry key), ``Config``, and implement :meth:`_mix`; data-driven ones set
    ``needs_fit = True`` and implement :meth:`_fit`, :meth:`_params` and :meth:`_load_params`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MixerConfig]] = MixerConfig
    needs_fit: ClassVar[bool] = False  # the distillation loop fits only mixers that say so
    needs_actual: ClassVar[bool] = False  # sequence-level mixers weight by CE on the realised bytes: required

    def __init__(self, config: MixerConfig | None = None, **options: Any):
        if config is not None and options:
            raise ConfigError(f"give mixer {self.name!r} either a config object or keyword options, not both")
        if config is None:
            config = validate_options(type(self), options)
        elif not isinstance(config, self.Config):
            raise ConfigError(f"mixer {self.name!r} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.teacher_names: list[str] | None = None
        self.num_teachers: int | None = None
        self.fitted = not self.needs_fit

    # -- public API ---------------------------------------------------------------------------------------
    def fit(self, logprobs: torch.Tensor, masks: torch.Tensor, actual: torch.Tensor,
            teacher_names: list[str] | None = None, *, features: torch.Tensor | None = None) -> "Mixer":
        """Learn from fit data (never from the data you will score). Fixed mixers only record names and K."""
        check_shapes(logprobs, masks, actual)
        self._check_teacher_count(int(logprobs.shape[0]), refit=True)
        self._bind_teachers(int(logprobs.shape[0]), teacher_names)
        if self.needs_fit:
            self.fitted = False  # a failed re-fit must not leave stale parameters looking valid
            self._fit(logprobs, masks, actual, features)
            self.fitted = True
        return self

    def __call__(self, logprobs: torch.Tensor, masks: torch.Tensor, *, actual: torch.Tensor | None = None,
                 features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture log-probs [N, 257] float32 (normalised on defined rows, NaN elsewhere) and its mask [N].

        ``actual`` is needed by sequence-level mixers (min-ce, softmax-ce) and ignored by the others;
        ``features`` [N, F] only by a gated mixer fit with external features.
        """
        if not self.fitted:
            raise MixerNotFittedError(f"mixer {self.name!r} learns its weights: call .fit(logprobs, masks, actual) "
                                      "on fit data (not the data you score) before using it, or load a saved one")
        if self.needs_actual:
            require_actual(self.name, actual)
        with torch.no_grad():
            inputs = prepare(logprobs, masks, actual, teacher_names=self.teacher_names)
            self._check_teacher_count(inputs.num_teachers)
            if self.num_teachers is None:  # never fit: the first call fixes the teacher set
                self.num_teachers = inputs.num_teachers
            mixed, defined = self._mix(inputs, features)
            return normalise_rows(mixed, defined).to(torch.float32), defined

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: name, options, weights per teacher (or a per-teacher summary), fit statistics."""
        return {"name": self.name, "options": self.config.model_dump(mode="json"), **self._describe()}

    # -- persistence --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this mixer exactly (plain types and tensors: torch.load-safe)."""
        return {"format": STATE_FORMAT, "name": self.name, "config": self.config.model_dump(mode="json"),
                "teacher_names": list(self.teacher_names) if self.teacher_names else None,
                "num_teachers": self.num_teachers, "fitted": self.fitted, "params": self._params()}

    def load_state_dict(self, state: dict[str, Any]) -> "Mixer":
        """Restore a state from :meth:`state_dict`. The saved mixer must be this kind, with these options."""
        if state.get("format") != STATE_FORMAT:
            raise MixInputError(f"unsupported mixer state format {state.get('format')!r} (expected {STATE_FORMAT})")
        if MIXERS.get(state["name"]) is not type(self):
            raise ConfigError(f"saved mixer is {state['name']!r} but this mixer is {self.name!r}: "
                              f"set mix to {state['name']!r} (or fit a new {self.name!r} mixer)")
        saved = self.Config.model_validate(state["config"])
        if saved != self.config:
            raise ConfigError(f"saved {self.name!r} mixer has options {saved.model_dump(mode='json')} but this one "
                              f"is configured with {self.config.model_dump(mode='json')}: use the saved options "
                              "(Mixer.load(path) does) or fit a new mixer")
        self.teacher_names = list(state["teacher_names"]) if state["teacher_names"] else None
        self.num_teachers = state["num_teachers"]
        self._load_params(state["params"])
        self.fitted = bool(state["fitted"])
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` atomically (temp file in the same folder + os.replace): a crash mid-write
        leaves the previous file intact, which is what a resumable distillation run relies on."""
        path = Path(path)
        from ..io import write_with

        write_with(path, lambda handle: torch.save(self.state_dict(), handle))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Mixer":
        """Rebuild a saved mixer with its saved options (any kind when called as ``Mixer.load``)."""
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        kind = MIXERS.get(state["name"])
        if cls is not Mixer and kind is not cls:
            raise ConfigError(f"{path} holds a {state['name']!r} mixer, not {cls.name!r}; load it with Mixer.load")
        mixer = kind(kind.Config.model_validate(state["config"]))
        return mixer.load_state_dict(state)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({options})"

    # -- for subclasses -----------------------------------------------------------------------------------
    def _mix(self, inputs: MixInputs, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement _mix")

    def _fit(self, logprobs: torch.Tensor, masks: torch.Tensor, actual: torch.Tensor,
             features: torch.Tensor | None) -> None:
        raise NotImplementedError(f"{type(self).__name__} sets needs_fit but does not implement _fit")

    def _describe(self) -> dict[str, Any]:
        return {}

    def _params(self) -> dict[str, Any]:
        return {}

    def _load_params(self, params: dict[str, Any]) -> None:
        return None

    def _check_teacher_count(self, k: int, refit: bool = False) -> None:
        """Raise unless ``k`` teachers fit this mixer; ``refit``: a new fit may change K (subclasses with a
        fixed per-teacher option, like linear's weights, still check it)."""
        if not refit and self.num_teachers is not None and k != self.num_teachers:
            raise MixInputError(f"mixer {self.name!r} was set up for {self.num_teachers} teachers "
                                f"({', '.join(self.names())}) but got {k}")

    def _bind_teachers(self, k: int, teacher_names: list[str] | None) -> None:
        if teacher_names is None:
            self.teacher_names = self.teacher_names if self.num_teachers == k else None
        else:
            teacher_names = [str(n) for n in teacher_names]
            if len(teacher_names) != k:
                raise MixInputError(f"{len(teacher_names)} teacher names for {k} teachers in logprobs")
            if len(set(teacher_names)) != k:
                raise MixInputError(f"teacher names must be distinct, got {teacher_names}")
            self.teacher_names = teacher_names
        self.num_teachers = k

    def names(self, k: int | None = None) -> list[str]:
        """Teacher names for reports: the ones given to ``fit``, else ``teacher0``, ``teacher1``, ..."""
        if self.teacher_names:
            return list(self.teacher_names)
        k = k if k is not None else (self.num_teachers or 0)
        return [f"teacher{i}" for i in range(k)]


def per_teacher(mixer: Mixer, values: torch.Tensor | list[float]) -> dict[str, float | None]:
    """{teacher name: value} for a [K] tensor or list, for ``describe`` (non-finite → None: JSON has no NaN)."""
    values = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    return {name: (v if math.isfinite(v) else None) for name, v in zip(mixer.names(len(values)), values, strict=True)}


# -- options ---------------------------------------------------------------------------------------------
def _valid_keys(kind: type[Mixer]) -> str:
    fields = kind.Config.model_fields
    if not fields:
        return f"mixer {kind.name!r} takes no options"
    parts = []
    for key, field in fields.items():
        doc = f": {field.description}" if field.description else ""
        parts.append(f"{key}{doc}")
    return f"Valid options for {kind.name!r}: " + " | ".join(parts)


def validate_options(kind: type[Mixer], options: Mapping[str, Any]):
    """``kind.Config`` from raw options, with errors that name the option and list the valid ones."""
    options = {str(k).strip().replace("-", "_"): v for k, v in options.items()}
    try:
        return kind.Config.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            field = loc[0] if loc else "(options)"
            item = f" item {int(loc[1]) + 1}" if len(loc) > 1 and loc[1].isdigit() else ""
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown option {field!r}")
            else:
                problems.append(f"option {field!r}{item}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"mixer {kind.name!r}: {'; '.join(problems)}. {_valid_keys(kind)}") from None
