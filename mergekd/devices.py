"""Device strings (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``): parsed and checked against this machine.

Why at the edge: a device that does not exist must stop the command before minutes of loading, with one line
that names it and what this machine has, never be accepted and ignored.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def check_device(value: str, field: str = "device") -> str:
    """``value`` if this machine has it (``auto`` always passes); else a ConfigError naming the value and the fix
    (``field`` names the flag in the fix; the caller prefixes the field itself)."""
    text = str(value).strip().lower()
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{value!r} but CUDA is not available on this machine; use --{_flag(field)} "
                              "cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{value!r} but this machine has {count} CUDA device(s) (cuda:0.."
                              f"cuda:{count - 1}); choose one of them")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{value!r} but MPS is not available on this machine; use --{_flag(field)} cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{value!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return text


def _flag(field: str) -> str:
    return field.replace("_", "-")
