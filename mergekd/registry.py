"""One registry idiom for every pluggable part (teachers, mixers, losses).

Why: users extend mergekd from their own packages. A decorator registers built-ins at import time, and the
entry-point group ``mergekd.<kind>`` lets a third-party package add entries without touching our code:

    # in the plugin's pyproject.toml
    [project.entry-points."mergekd.teachers"]
    my-teacher = "my_pkg.teachers:my_teacher_spec"

Entry points are loaded lazily, the first time a name is looked up or listed, so importing mergekd stays fast
and a broken plugin only breaks the lookups that need it (with an error naming the plugin).
"""

from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from .errors import MergekdError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object map with decorator registration, entry-point discovery and helpful unknown-name errors."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group or f"mergekd.{kind}"
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._entry_points_loaded = False
        self._plugin_errors: list[MergekdError] = []

    # -- registration -------------------------------------------------------------------------------------
    def register(self, name: str, *, aliases: tuple[str, ...] = (), replace: bool = False) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a class or function."""

        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases, replace=replace)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), replace: bool = False) -> None:
        key = self._normalise(name)
        if not replace and key in self._items and self._items[key] is not obj:
            raise MergekdError(f"{self.kind} {name!r} is registered twice; pass replace=True to override it")
        self._items[key] = obj
        for alias in aliases:
            self._aliases[self._normalise(alias)] = key

    # -- lookup -------------------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        key = self._normalise(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            self._load_entry_points()
            key = self._aliases.get(key, key)
        if key not in self._items:
            known = self.names()
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}: {', '.join(known) or '(none)'}. "
                f"Plugins add more through the entry-point group {self.entry_point_group!r}."
            )
        return self._items[key]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]

    # -- internals ----------------------------------------------------------------------------------------
    @staticmethod
    def _normalise(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def _load_entry_points(self) -> None:
        """Load every plugin once; a broken one is reported (on every lookup) without hiding the others."""
        if self._entry_points_loaded:
            if self._plugin_errors:
                raise self._plugin_errors[0]
            return
        self._entry_points_loaded = True
        self._plugin_errors: list[MergekdError] = []
        for ep in metadata.entry_points(group=self.entry_point_group):
            if self._normalise(ep.name) in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                error = MergekdError(
                    f"plugin {ep.name!r} ({ep.value}) in entry-point group {self.entry_point_group!r} "
                    f"failed to load: {exc}"
                )
                error.__cause__ = exc
                self._plugin_errors.append(error)
                continue
            self.add(ep.name, obj)
        if self._plugin_errors:
            raise self._plugin_errors[0]
