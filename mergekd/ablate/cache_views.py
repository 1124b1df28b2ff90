"""One teacher cache for the whole grid, and per-subset *views* of it that the distill loop reads unchanged.

Why views: the loop opens ``CachedSignal(cfg.cache, cfg)``, which insists that the cache holds exactly the run's
teachers in the run's order (a safety check worth keeping: a cache of other teachers must never be used by
accident). An ablation wants the opposite: capture the union of its teachers once — teacher forward passes are
the expensive part — and train every subset from it. A view is a folder with its own ``manifest.json`` listing
only the subset's teacher records (in the subset's order, shard records and checksums unchanged) and a symlink
per teacher to the union cache's shard folder. Every check of the reader still runs (data identity, conversion
rule, completeness, the sha256 of each shard it loads); no shard is copied, and the loop needs no change.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from ..cache.manifest import MANIFEST, CacheFormatError, Manifest, read_manifest, write_manifest
from ..errors import ConfigError
from ..io import folder_size, human_size, move_aside


def ensure_union_cache(path: Path, specs: list[str], data: Path, *, seq_bytes: int, top_k: int, tail: float,
                       shard_chunks: int, max_length: int, byte_rule: str, device: str, console=None,
                       show_progress: bool = True, owned: bool = False) -> Manifest:
    """Capture (or resume, or just reopen) the cache of ``specs`` over ``data``.

    An existing cache at ``path`` that holds *more* teachers than the grid needs is reused as it is (its own
    teacher list is resumed); one that lacks a needed teacher is refused, because a cache cannot grow a teacher
    without a new capture. An ablate-``owned`` cache (the default folder under OUT, which ablate named and
    filled) whose data or capture options no longer match is moved aside (``NAME.old-1``, said with its size)
    and captured again: it may hold hours of teacher passes, so it is kept for the user to reuse or delete. A
    cache the user named is never moved (the capture's own mismatch error names the fix).
    """
    from ..cache import capture_cache

    path = Path(path)
    capture = list(specs)
    if owned and (path / MANIFEST).is_file():
        try:
            stale = _stale(read_manifest(path), data, seq_bytes=seq_bytes, top_k=top_k, tail=tail,
                           shard_chunks=shard_chunks, max_length=max_length, byte_rule=byte_rule)
        except CacheFormatError:  # written by another mergekd version: kept aside like any outdated owned cache
            stale = True
        if stale:
            _move_stale(path, console)
    if (path / MANIFEST).is_file():
        held = [t.spec for t in read_manifest(path).teachers]
        missing = [s for s in specs if s not in held]
        if missing:
            raise ConfigError(f"cache {path} holds teachers {held} but the grid also needs {missing}; set "
                              "`cache: {path: NEW_FOLDER}` (or move the folder away) to capture all of them")
        capture = held
    return capture_cache(path, capture, data, top_k=top_k, tail=tail, seq_bytes=seq_bytes,
                         shard_chunks=shard_chunks, device=device, max_length=max_length, byte_rule=byte_rule,
                         show_progress=show_progress, console=console)


def _stale(old: Manifest, data: Path, *, seq_bytes: int, top_k: int, tail: float, shard_chunks: int,
           max_length: int, byte_rule: str) -> bool:
    """Whether a cache was captured from other data or with other capture options than these. Its data is
    compared by chunk texts (streamed over the chunks it covers, skipped when the files are unchanged); an
    unfinished capture is compared over the shards it has."""
    from ..cache.identity import cache_source
    from ..cache.manifest import check_chunks, check_limits_match, check_shard_texts, check_source
    from ..sources import resolve

    if (old.top_k, old.tail, old.shard_chunks, old.teacher_options.get("max_length"),
            old.teacher_options.get("byte_rule", "canonical")) != (top_k, tail, shard_chunks, max_length, byte_rule):
        return True
    source = cache_source(data)
    resolve(source)  # missing data is the user's error to fix, not a reason to move the cache aside
    try:
        check_source(old, source, seq_bytes, "cache")
        check_limits_match(old, None, None, "cache")
        if old.data.complete:
            check_chunks(old, source, "cache", trust_files=True)
        else:  # an unfinished capture: the chunks of its finished shards
            stop = max((s.stop for t in old.teachers for s in t.shards), default=0)
            if check_shard_texts(old, source, "cache", stop)[0].count < stop:
                return True
    except ConfigError:
        return True
    return False


def _move_stale(path: Path, console) -> Path:
    """Move an outdated owned cache aside and say in one line where it went and how big it is."""
    size = human_size(folder_size(path))
    aside = move_aside(path, "old")
    if console is not None:
        console.print(f"  cache {path} was captured from other data or options: moved it ({size}) to {aside} "
                      "(kept, not deleted); capturing it again")
    return aside


def _records_by_spec(manifest: Manifest) -> dict:
    """Teacher spec → its manifest record (the first, should a spec appear twice)."""
    by_spec: dict = {}
    for record in manifest.teachers:
        by_spec.setdefault(record.spec, record)
    return by_spec


def subset_view(union: Path, view: Path, subset: list[str]) -> Path:
    """Make ``view`` a cache of exactly ``subset`` (in this order) backed by the shards of ``union``."""
    union, view = Path(union), Path(view)
    manifest = read_manifest(union)
    by_spec = _records_by_spec(manifest)
    missing = [s for s in subset if s not in by_spec]
    if missing:
        raise ConfigError(f"cache {union} has no teacher {missing}; it holds {list(by_spec)}")
    view.mkdir(parents=True, exist_ok=True)
    records = [copy.deepcopy(by_spec[s]) for s in subset]
    for record in records:
        link = view / record.dir
        target = os.path.relpath((union / record.dir).resolve(), view.resolve())
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    sub = copy.deepcopy(manifest)
    sub.teachers = records
    if _view_manifest(view) != sub.to_json() | {"updated": 0, "created": 0}:
        write_manifest(view, sub)
    return view


def _view_manifest(view: Path) -> dict | None:
    """A view's manifest without its timestamps, or None when there is none or it is in another format version
    (a view is derived from the union cache alone, so an old one is simply rewritten)."""
    if not (view / MANIFEST).is_file():
        return None
    try:
        return read_manifest(view).to_json() | {"updated": 0, "created": 0}
    except CacheFormatError:
        return None


def cache_identity(union_manifest: Manifest, subset: list[str]) -> dict:
    """What a cell's targets depend on, path-free: capture options, data chunks, and each teacher's weights."""
    by_spec = _records_by_spec(union_manifest)
    return {
        "top_k": union_manifest.top_k, "tail": union_manifest.tail,
        "max_length": union_manifest.teacher_options.get("max_length"),
        "byte_rule": union_manifest.teacher_options.get("byte_rule", "canonical"),
        "conversion": union_manifest.conversion, "chunks": union_manifest.data.chunks_sha256,
        "teachers": [[s, by_spec[s].weights_sha256] for s in subset],
    }
