"""The teacher registry and the one function that turns a spec string into (name, spec, options).

Built-in teachers are YAML files in the repository's ``teachers/`` folder (:mod:`mergekd.teachers.builtin`); plugins add
theirs through the entry-point group ``mergekd.teachers``. A registered object is a :class:`TeacherSpec` or a
zero-argument callable returning one (so a plugin can compute paths lazily)::

    # the plugin's pyproject.toml
    [project.entry-points."mergekd.teachers"]
    my-teacher = "my_pkg.teachers:my_teacher"      # a TeacherSpec, or a function returning one
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from ..errors import ConfigError, MergekdError, UnknownNameError
from ..registry import Registry
from .options import TeacherOptions, build_options, parse_option_query
from .spec import TeacherSpec, inline_spec

SpecFactory = Union[TeacherSpec, Callable[[], TeacherSpec]]

TEACHERS: Registry[SpecFactory] = Registry("teachers", "mergekd.teachers")


@dataclass(frozen=True)
class ResolvedTeacher:
    """A spec string, understood: the display ``name`` (the string as typed, without options), spec, options."""

    name: str
    spec: TeacherSpec
    options: TeacherOptions


def registered_spec(name: str) -> TeacherSpec:
    """The :class:`TeacherSpec` registered under ``name`` (built in or plugin); unknown → close matches."""
    obj = TEACHERS.get(name)
    spec = obj
    if callable(obj) and not isinstance(obj, TeacherSpec):
        try:
            spec = obj()
        except MergekdError:
            raise
        except Exception as exc:  # a plugin's bug must name the plugin, not crash `teachers list`
            raise ConfigError(f"teacher {name!r}: its spec function {getattr(obj, '__qualname__', obj)!r} "
                              f"failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(spec, TeacherSpec):
        raise ConfigError(f"teacher {name!r} is registered as {type(obj).__name__}, which is neither a TeacherSpec "
                          "nor a function returning one; fix the plugin's entry point")
    return spec


def split_spec_string(text: str) -> tuple[str, str]:
    """``"name?opts"`` → ``("name", "opts")`` (validated non-empty)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("teacher: empty spec; write a registered name (mergekd teachers list), hf:PATH or gguf:PATH")
    head, _, query = text.strip().partition("?")
    head = head.strip()
    if not head:
        raise ConfigError(f"teacher {text!r}: options without a teacher before '?'")
    return head, query


def resolve_teacher(text: str, overrides: Mapping[str, Any] | None = None) -> ResolvedTeacher:
    """Parse a spec string. Options merge as: the spec's defaults < ``overrides`` (command-line flags) < the
    options written in the string itself (the most specific wins)."""
    head, query = split_spec_string(text)
    where = f"teacher {head!r}"
    inline = parse_option_query(query, where)
    if head.startswith("hf:"):
        spec = inline_spec("hf", head[3:].strip(), head)
    elif head.startswith("gguf:"):
        spec = inline_spec("gguf", head[5:].strip(), head)
    else:
        try:
            spec = registered_spec(head)
        except UnknownNameError as exc:
            raise UnknownNameError(
                f"{exc} For a local folder or hub id write hf:PATH_OR_ID; for a GGUF file write gguf:PATH."
            ) from None
    options = build_options(where, spec.defaults, overrides or {}, inline)
    options.check_device_available(where)
    name = head if head.startswith(("hf:", "gguf:")) else head.lower().replace("_", "-")
    return ResolvedTeacher(name=name, spec=spec, options=options)


def all_specs() -> list[TeacherSpec]:
    """Every registered teacher (built-ins and plugins), sorted by name; a broken entry raises."""
    return [registered_spec(name) for name in TEACHERS.names()]


def list_specs() -> list[tuple[str, TeacherSpec | MergekdError]]:
    """Every registered name with its spec, or the error that a broken plugin entry gives, so one bad plugin
    shows up as one bad row in ``mergekd teachers list`` instead of hiding every teacher."""
    out: list[tuple[str, TeacherSpec | MergekdError]] = []
    for name in TEACHERS.names():
        try:
            out.append((name, registered_spec(name)))
        except MergekdError as exc:
            out.append((name, exc))
    out += TEACHERS.failures().items()  # plugins whose module failed to import: one row each
    return sorted(out, key=lambda row: row[0])
