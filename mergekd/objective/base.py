"""What an objective term is, its registry, and the one parser of term specs (YAML mappings and CLI strings).

Why a registry of small classes: each term declares what it needs, so the loop loads teachers only when a term
reads their rows, builds the byte head only when a term trains it, and the config refuses a term whose inputs
cannot exist (a teacher term without teachers) before anything loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, one_line
from ..registry import Registry

TERMS: Registry[type["ObjectiveTerm"]] = Registry("objective terms", "mergekd.objective_terms")


class TermOptions(BaseModel):
    """Options every term has; a term's own ``Options`` subclasses this and adds fields with descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, ge=0, description="the term's weight in the loss (0: computed and logged only)")


class ObjectiveTerm:
    """One weighted part of the loss. Subclasses set ``name``, ``Options`` and the ``needs_*`` flags and
    implement :meth:`per_example`.

    ``per_example(ctx)`` returns the term's value per example ``[B]`` (each example averaged over its own tokens
    or byte rows, so data-parallel workers average to the 1-process gradient), or None when the batch has
    nothing for it. Terms that score the reference text (``uses_reference_text``) get weight 0 on on-policy
    batches, whose text the student wrote."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[TermOptions]] = TermOptions
    needs_teacher_rows: ClassVar[bool] = False
    needs_byte_head: ClassVar[bool] = False
    needs_student_byte_rows: ClassVar[bool] = False
    uses_reference_text: ClassVar[bool] = False

    def __init__(self, options: TermOptions | None = None):
        self.options = options if options is not None else self.Options()

    @property
    def weight(self) -> float:
        return float(self.options.weight)

    def per_example(self, ctx) -> torch.Tensor | None:
        raise NotImplementedError(f"{type(self).__name__} must implement per_example(ctx)")

    def describe(self) -> str:
        """One line for the model card: the term and every option that is not at its default."""
        extra = {k: v for k, v in self.options.model_dump(exclude_defaults=True).items() if k != "weight"}
        opts = ", ".join(f"{k}={v}" for k, v in extra.items())
        return f"{self.name} × {self.weight:g}" + (f" ({opts})" if opts else "")

    def spec(self) -> dict[str, Any]:
        """The term as a config mapping (what ``objective:`` in YAML holds; part of the run's fingerprint)."""
        return {"term": self.name, **self.options.model_dump(mode="json")}

    def __repr__(self) -> str:
        return f"<term {self.describe()}>"


def _parse_string(text: str) -> dict[str, Any]:
    """``"trie_kl:weight=3,depth=0"`` → ``{"term": "trie_kl", "weight": "3", "depth": "0"}``."""
    name, _, rest = text.strip().partition(":")
    spec: dict[str, Any] = {"term": name.strip()}
    for item in (p.strip() for p in rest.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"objective term {text!r}: option {item!r} is not KEY=VALUE (write e.g. "
                              "trie_kl:weight=3,depth=0)")
        spec[key.strip().replace("-", "_")] = value.strip()
    return spec


def build_term(spec: str | Mapping[str, Any] | ObjectiveTerm) -> ObjectiveTerm:
    """A term from ``{term: NAME, **options}``, ``"NAME:k=v,k=v"`` or a ready term. Unknown names list close
    matches; bad options name the term, the option and the valid ones."""
    if isinstance(spec, ObjectiveTerm):
        return spec
    raw = _parse_string(spec) if isinstance(spec, str) else dict(spec)
    name = raw.pop("term", None)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"objective term {spec!r} needs a 'term' naming it (one of: {', '.join(TERMS.names())})")
    kind = TERMS.get(name)
    try:
        options = kind.Options.model_validate(raw)
    except ValidationError as exc:
        valid = ", ".join(kind.Options.model_fields)
        raise one_line(exc, f"objective term {kind.name!r} (options: {valid})") from None
    return kind(options)


def build_terms(specs) -> list[ObjectiveTerm]:
    """The objective from a list of specs (a single string may hold several separated by ';')."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(";") if s.strip()]
    terms = [build_term(s) for s in specs]
    names = [t.name for t in terms]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"objective: term {', '.join(twice)} is listed twice; give each term once")
    if not terms:
        raise ConfigError("objective: the list is empty; add at least one term, e.g. {term: token_ce}")
    return terms


def describe_terms(terms: list[ObjectiveTerm]) -> str:
    return " + ".join(t.describe() for t in terms)
