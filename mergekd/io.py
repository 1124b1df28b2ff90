"""The one place mergekd writes files: atomically, so a crash or a kill never leaves half a file.

Why one module: caches, checkpoints, reports, exports and JSON summaries are what hours of compute produce. Every
write goes through a temporary sibling and ``os.replace`` (the reader sees the old file or the new one), text is
UTF-8, JSON refuses NaN unless asked, and folders are swapped in whole. Nothing else in the tree calls
``tempfile.mkstemp``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def write_atomic(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` through a temporary sibling, ``fsync`` and ``os.replace``."""
    return write_with(path, lambda fh: fh.write(data.encode("utf-8") if isinstance(data, str) else data))


def write_with(path: Path | str, writer: Callable[[Any], Any]) -> Path:
    """Atomically write whatever ``writer(binary_file_handle)`` writes (e.g. ``torch.save(obj, fh)``).

    The file gets the permissions a plain ``open(path, "w")`` would give (umask applied), not mkstemp's 0600,
    so other users of a shared cluster can read what they are meant to read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, payload: Any, *, indent: int = 1, allow_nan: bool = False) -> Path:
    """JSON, atomically, with a trailing newline. NaN/inf are refused by default (they are not JSON)."""
    return write_atomic(path, json.dumps(payload, indent=indent, allow_nan=allow_nan, default=str) + "\n")


def write_if_changed(path: Path | str, data: bytes | str) -> None:
    """:func:`write_atomic` unless ``path`` already holds exactly ``data``: an unchanged file keeps its mtime, so
    caches keyed on it stay valid (data slices, demo markers)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if not (Path(path).is_file() and Path(path).read_bytes() == data):
        write_atomic(path, data)


@contextmanager
def atomic_folder(target: Path | str, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it becomes ``target`` in one rename.

    ``replace=True``: an existing ``target`` is moved aside first and deleted only after the new folder is in
    place, so a crash leaves either the old folder or the new one. ``replace=False`` (shared caches that several
    processes may build at once): if ``target`` exists when ours is ready, theirs is kept and ours dropped. The
    folder gets ordinary permissions (umask applied), not mkdtemp's 0700."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if not replace:
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.exists():  # not a lost race: a real failure
                    raise
            return
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def move_aside(path: Path | str, reason: str = "old") -> Path:
    """Rename ``path`` to a free sibling ``NAME.<reason>-<n>`` and return it: work that is no longer current but
    that the user may want is kept, never deleted."""
    path = Path(path)
    n = 1
    while True:
        aside = path.with_name(f"{path.name}.{reason}-{n}")
        if not aside.exists():
            os.replace(path, aside)
            return aside
        n += 1


def folder_size(path: Path | str) -> int:
    """Bytes under ``path`` (files only), for messages that say what a command would move or delete."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
