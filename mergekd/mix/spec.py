"""``--mix NAME[:k=v,k=v]`` specs and YAML dicts → validated mixer options → a built mixer.

Why here and not in the CLI: the same spec arrives from a command-line flag, a YAML config and Python code;
one parser means one set of error messages, each naming the offending option and listing the valid ones.

Syntax: ``linear``, ``linear:weights=0.3;0.7``, ``softmax-ce:temperature=0.5``, ``gated:hidden=32,epochs=200``.
',' separates options, ';' separates the items of a list option. Values are converted by the mixer's typed
config (pydantic, lax mode: "2" → 2, "0.5" → 0.5, "true" → True).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import MIXERS, Mixer, _valid_keys, validate_options  # noqa: F401  (validate_options re-exported)


def parse_mix_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME[:k=v,k=v]"`` → (registry name, typed options). Raises ConfigError / UnknownNameError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"mix spec must be a non-empty string like 'linear' or 'linear:weights=0.3;0.7', "
                          f"got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    kind: type[Mixer] = MIXERS.get(name.strip())  # unknown names: UnknownNameError with close matches
    raw: dict[str, str] = {}
    for item in (part.strip() for part in rest.split(",")) if rest.strip() else ():
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"mix spec {spec!r}: option {item!r} is not KEY=VALUE (',' separates options, "
                              f"';' separates list items). {_valid_keys(kind)}")
        if key in raw:
            raise ConfigError(f"mix spec {spec!r}: option {key!r} is given twice. {_valid_keys(kind)}")
        raw[key] = value.strip()
    config = validate_options(kind, raw)
    typed = {key: getattr(config, key) for key in raw}
    return kind.name, typed


def build_mixer(spec: str | Mapping[str, Any] | Mixer, **options: Any) -> Mixer:
    """A mixer from a spec string, a YAML-style dict ``{"name": ..., **options}``, or a Mixer (returned as is).

    Keyword ``options`` override those in the spec.
    """
    if isinstance(spec, Mixer):
        if options:
            raise ConfigError(f"build_mixer got a ready {spec.name!r} mixer and options {sorted(options)}; "
                              "pass a spec string or dict to set options")
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"mix config needs a 'name' field naming the mixer (one of: {', '.join(MIXERS.names())})"
                              f", got {spec!r}")
        kind: type[Mixer] = MIXERS.get(name)
        merged = {**spec, **options}
    else:
        name, parsed = parse_mix_spec(spec)
        kind = MIXERS.get(name)
        merged = {**parsed, **options}
    return kind(validate_options(kind, merged))
