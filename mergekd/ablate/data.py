"""Offline text slices as data files: ``asset:NAME[start:stop]`` in an ablation config.

Why: the distill loop, the cache and evaluation all read *files* (and key caches on their content), while the
public-domain texts mergekd can use without network live in :mod:`mergekd.assets`. A slice spec lets a config
say "the first 40 KB of Botchan for training, its last 16 KB held out" reproducibly on any machine: ablate
writes each slice once to ``OUT/data/NAME.START_STOP.txt`` (atomically; rewritten only if the text differs).

Slices are Python slices over the UTF-8 **bytes** of the text's *body* (:func:`mergekd.assets.read_body`: a
Project Gutenberg book without its header and its ~18 KB licence, which would otherwise be the "held-out" end of
every book), negative indices counting from the end, either bound optional, moved inward to character boundaries
so a slice never splits a character. Same convention as :func:`mergekd.assets.text_slice`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from ..text import char_bounds

ASSET_PREFIX = "asset:"
_SPEC = re.compile(r"^asset:(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def is_asset(value: str) -> bool:
    return isinstance(value, str) and value.startswith(ASSET_PREFIX)


def parse_asset(spec: str, where: str = "data") -> tuple[str, int | None, int | None]:
    """``asset:botchan[0:40000]`` → ("botchan", 0, 40000); errors name the field, the known texts and the form."""
    from ..assets import TEXTS

    m = _SPEC.match(spec.strip())
    if not m:
        raise ConfigError(f"{where}: cannot read {spec!r}; write asset:NAME or asset:NAME[start:stop] (byte "
                          f"offsets, e.g. asset:botchan[0:40000] or asset:botchan[-16000:])")
    name = m["name"]
    if name not in TEXTS:
        import difflib

        close = difflib.get_close_matches(name, list(TEXTS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}: unknown offline text {name!r}{hint} (known: {', '.join(TEXTS)})")
    start = int(m["start"]) if m["start"] not in (None, "") else None
    stop = int(m["stop"]) if m["stop"] not in (None, "") else None
    return name, start, stop


def _bound(value: int | None, empty: str) -> str:
    if value is None:
        return empty
    return f"m{-value}" if value < 0 else str(value)


def target_path(spec: str, out: Path) -> Path:
    """The file ``spec`` is written to under ``OUT/data`` (a pure function of the spec: stable across runs)."""
    name, start, stop = parse_asset(spec)
    suffix = "" if start is None and stop is None else f".{_bound(start, '0')}_{_bound(stop, 'end')}"
    return Path(out) / "data" / f"{name}{suffix}.txt"


def _body(name: str) -> bytes:
    from ..assets import read_body

    return read_body(name).encode("utf-8")


def byte_range(spec: str) -> tuple[str, int, int]:
    """(name, a, b): the byte range [a, b) of the text body that ``spec`` selects, on character boundaries."""
    name, start, stop = parse_asset(spec)
    a, b = char_bounds(_body(name), start, stop)
    return name, a, b


def slice_bytes(spec: str) -> bytes:
    name, a, b = byte_range(spec)
    body = _body(name)
    if not body[a:b].strip():
        raise ConfigError(f"{spec!r} selects no text (the body of {name!r} has {len(body):,} bytes)")
    return body[a:b]


def materialize(spec: str, out: Path) -> Path:
    """Write the slice to its target file (atomically, only when missing or different) and return the path."""
    path = target_path(spec, out)
    from ..io import write_if_changed

    write_if_changed(path, slice_bytes(spec))
    return path


def check_disjoint(train: str, held_out: str) -> None:
    """Held-out text that overlaps the training text would make every BPB optimistic: refuse it."""
    if not (is_asset(train) and is_asset(held_out)):
        return
    n1, a1, b1 = byte_range(train)
    n2, a2, b2 = byte_range(held_out)
    if n1 == n2 and a1 < b2 and a2 < b1:
        raise ConfigError(f"base.eval_data {held_out!r} overlaps base.data {train!r} (bytes [{max(a1, a2)}, "
                          f"{min(b1, b2)}) of {n1}); held-out text must not be trained on — choose disjoint slices")
