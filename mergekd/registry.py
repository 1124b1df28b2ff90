"""One registry idiom for every pluggable part (teachers, mixers, losses).

Why: users extend mergekd from their own packages. A decorator registers built-ins at import time, and the
entry-point group ``mergekd.<kind>`` lets a third-party package add entries without touching our code:

    # in the plugin's pyproject.toml
    [project.entry-points."mergekd.teachers"]
    my-teacher = "my_pkg.teachers:my_teacher_spec"

Entry points are loaded lazily, the first time a name is looked up or listed, so importing mergekd stays fast.
A plugin that fails to load fails alone: its name answers with its error, listings show it as one broken row
(:meth:`Registry.failures`), and every other name, listing and "did you mean" keeps working.
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
        self._plugin_errors: dict[str, MergekdError] = {}

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
        return self._items[self.canonical(name)]

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (aliases resolved); unknown → close matches, broken → its error."""
        key = self._normalise(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            self._load_entry_points()
            key = self._aliases.get(key, key)
        if key in self._items:
            return key
        if key in self._plugin_errors:
            raise self._plugin_errors[key]
        known = self.names()
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        broken = f" Plugins that failed to load: {', '.join(sorted(self._plugin_errors))}." if self._plugin_errors else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}: {', '.join(known) or '(none)'}.{broken} "
            f"Plugins add more through the entry-point group {self.entry_point_group!r}."
        )

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except MergekdError:
            return False
        return True

    def names(self) -> list[str]:
        """Names that load (built-ins and working plugins), sorted; broken plugins are in :meth:`failures`."""
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]

    def failures(self) -> dict[str, MergekdError]:
        """Plugins of this group that failed to load, by entry-point name, each with the error naming it."""
        self._load_entry_points()
        return dict(sorted(self._plugin_errors.items()))

    # -- internals ----------------------------------------------------------------------------------------
    @staticmethod
    def _normalise(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def _load_entry_points(self) -> None:
        """Load every plugin once; a broken one is remembered under its own name, without hiding the others."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            key = self._normalise(ep.name)
            if key in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import error of third-party code; it must name the plugin
                error = MergekdError(
                    f"{self.kind} plugin {ep.name!r} ({ep.value}) in entry-point group {self.entry_point_group!r} "
                    f"failed to load: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                self._plugin_errors[key] = error
                continue
            self.add(ep.name, obj)
