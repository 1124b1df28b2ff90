"""Command-line options generated from the config models, so help text, choices and validation live in one place.

Why: hand-copied options drift (a flag without help, a Literal typed ``str`` so ``--help`` shows no choices, a
default that differs from the config's). Here every option of every command comes from a field of a pydantic
model: ``mergekd distill``'s from :class:`~mergekd.distill.config.DistillConfig`, the others' from a small options
model next to the command (``EvalOptions``, ``CacheOptions``, ...). The field's description is the help, a
``Literal`` becomes the choices, and the default (and any bound) shown is the field's. Every flag defaults to None
("not given"), so YAML values and the model's own defaults apply underneath (:func:`validated`), and a command
still knows which flags the user set.

The teacher-runtime group (:data:`TEACHER_RUNTIME`) is spelled the same on every command that runs teachers:
``--teachers``, ``--teacher-device``, ``--teacher-max-length``, ``--teacher-batch-size``, ``--byte-rule``.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..teachers.runtime import TeacherRuntime


TEACHER_RUNTIME = tuple(TeacherRuntime.model_fields)


def _cli_type(annotation) -> Any:
    """The type typer parses for a field: Optional of a scalar, a Path, a Literal (choices) or a list of str."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return Optional[annotation]
    if origin in (typing.Union, types.UnionType):
        if len(args) == 1:
            return _cli_type(args[0])
        if any(typing.get_origin(a) is list for a in args) or list in args:
            return Optional[list[str]]
        return Optional[Path] if Path in args else Optional[str]  # str | dict (mix): the string form
    if origin is list:
        return Optional[str]  # comma-separated on the command line
    if annotation in (int, float, str, bool, Path):
        return Optional[annotation]
    return Optional[str]


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _help(field, extra: str = "") -> str:
    """The description, then the default and bounds the model applies (flags default to None, so typer cannot show
    them); a False default is a flag's absence and not shown, a default with a newline or tab is shown quoted."""
    text = (field.description or "").strip()
    default = field.default
    notes = []
    if default is not PydanticUndefined and default not in (None, [], ()) and default is not False \
            and not callable(default):
        shown = repr(default) if isinstance(default, str) and not default.isprintable() else default
        notes.append(f"default: {shown}")
    notes += [f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in _BOUNDS
              if getattr(m, attr, None) is not None]
    if notes:
        text += f" ({', '.join(notes)})"
    return (text + (" " + extra if extra else "")).strip()


def option(name: str, field, *, flags: tuple[str, ...] = (), metavar: str | None = None,
           annotation=None, extra_help: str = "", panel: str | None = None,
           required: bool = False) -> inspect.Parameter:
    """One keyword parameter with a ``typer.Option`` built from a pydantic field (default None = not given;
    ``required``: click itself refuses a missing flag, as a hand-written ``typer.Option(...)`` did)."""
    names = flags or (f"--{name.replace('_', '-')}",)
    opt = typer.Option(... if required else None, *names, help=_help(field, extra_help), metavar=metavar,
                       rich_help_panel=panel, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                             annotation=annotation or _cli_type(field.annotation))


def argument(name: str, field, *, annotation=None) -> inspect.Parameter:
    """A positional ``typer.Argument`` from a pydantic field (``mergekd vocab TOKENIZER``, ``ablate CONFIG``)."""
    arg = typer.Argument(... if field.is_required() else None, help=_help(field), show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=arg,
                             annotation=annotation or _cli_type(field.annotation))


def model_options(model: type[BaseModel], *, exclude: tuple[str, ...] = (), flags: dict[str, tuple] | None = None,
                  metavars: dict[str, str] | None = None, panels: dict[str, str] | None = None,
                  annotations: dict[str, Any] | None = None, order: list[str] | None = None,
                  arguments: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Options for every field of ``model`` except ``exclude``, in field order (or in ``order``: every field);
    the fields in ``arguments`` are positional, those in ``required`` are flags click requires."""
    flags, metavars, panels, annotations = flags or {}, metavars or {}, panels or {}, annotations or {}
    names = order if order is not None else list(model.model_fields)
    if sorted(names) != sorted(model.model_fields):
        raise ValueError(f"order must list every field of {model.__name__} once")
    fields = model.model_fields
    return [argument(name, fields[name], annotation=annotations.get(name)) if name in arguments else
            option(name, fields[name], flags=flags.get(name, ()), metavar=metavars.get(name),
                   panel=panels.get(name), annotation=annotations.get(name), required=name in required)
            for name in names if name not in exclude]


def teacher_runtime_options(*, flags: dict[str, tuple] | None = None) -> list[inspect.Parameter]:
    """The teacher-runtime group, identical on every command (``flags`` may add legacy spellings)."""
    return model_options(TeacherRuntime, flags=flags, panels={n: "Teacher runtime" for n in TEACHER_RUNTIME})


def with_options(*groups: list[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Give ``func(**options)`` the generated signature typer reads (groups are concatenated in order)."""
    params = [p for group in groups for p in group]

    def decorate(func: Callable) -> Callable:
        func.__signature__ = inspect.Signature(params)
        func.__annotations__ = {p.name: p.annotation for p in params}
        return func

    return decorate


def runtime_overrides(options: dict) -> dict:
    """The teacher-runtime flags as :class:`~mergekd.teachers.options.TeacherOptions` overrides."""
    return {"device": options.get("teacher_device"), "max_length": options.get("teacher_max_length"),
            "batch_size": options.get("teacher_batch_size"), "byte_rule": options.get("byte_rule")}


def refuse_unused(options: dict, names: tuple[str, ...], command: str, why: str) -> None:
    """A runtime flag that cannot take effect in ``command`` is refused by name, never ignored."""
    from ..errors import ConfigError

    given = [f"--{n.replace('_', '-')}" for n in names if options.get(n) is not None]
    if given:
        raise ConfigError(f"{command}: {', '.join(given)} cannot take effect here ({why}); drop "
                          f"{'it' if len(given) == 1 else 'them'}")


def validated(model: type[BaseModel], options: dict, command: str):
    """``model`` built from the options the user gave (None = not given, so the model's defaults apply).

    A required field that is missing is ``--flag is required`` (as :func:`require` words it); any other invalid
    value is one line naming the command and the field (``mergekd eval — chunk_bytes: ...``). Options that are not
    the model's (the teacher-runtime group) are left to the command."""
    from pydantic import ValidationError

    from ..errors import one_line

    require(options, *(name for name, field in model.model_fields.items() if field.is_required()))
    given = {k: v for k, v in options.items() if k in model.model_fields and v is not None}
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise one_line(exc, f"mergekd {command}") from None


def require(options: dict, *names: str) -> tuple:
    """The values of required options, or one line naming the first missing flag."""
    from ..errors import ConfigError

    for name in names:
        if options.get(name) in (None, ""):
            raise ConfigError(f"--{name.replace('_', '-')} is required")
    return tuple(options[n] for n in names)
