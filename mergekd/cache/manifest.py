"""The cache manifest: what was captured (data, teachers, rule, options) and which shards are finished.

Why a manifest separate from the shards: a reader must decide *before* touching any shard whether the cache
belongs to its run (same chunks, same teachers in the same order, same conversion rule), and a resumed capture
must know which shards are finished and what their checksums are. The manifest is rewritten atomically (temp
file + ``os.replace``) after every shard, so it never describes a shard that is not fully on disk.

Layout of a cache folder::

    CACHE/manifest.json
    CACHE/t0-<teacher slug>/shard-00000.safetensors   chunks [0, shard_chunks)
    CACHE/t0-<teacher slug>/shard-00001.safetensors   chunks [shard_chunks, 2·shard_chunks)
    CACHE/t1-<teacher slug>/...

Format version 2 (streamed capture): the data is identified by its source spec, limits and chunk hashes (no
whole-file hash), each shard records the hash of its chunk texts, and the chunk count is known only once the
first pass has ended (``data.complete``). Version-1 caches are refused with the fix (capture again).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import write_json
from .identity import ChunkHasher, DataIdentity, cache_source, conversion_rule, covered_chunks, reading_options, \
    same_files

MANIFEST = "manifest.json"
FORMAT_NAME = "mergekd-byte-cache"
FORMAT_VERSION = 2


@dataclass
class ShardRecord:
    """One finished shard file: chunks [start, stop) of one teacher."""

    file: str  # relative to the cache folder
    start: int
    stop: int
    rows: int  # text bytes (byte rows) in the shard
    entries: int  # stored (byte, log-prob) entries
    bytes: int  # file size
    sha256: str
    text_sha256: str  # chunks_sha256 of the shard's chunk texts: a resumed capture checks the data against it


@dataclass
class TeacherRecord:
    """One teacher of the cache, in run order. Identity fields are filled when the teacher is first loaded."""

    spec: str
    dir: str
    name: str | None = None
    describe: dict[str, Any] | None = None
    weights_sha256: str | None = None
    shards: list[ShardRecord] = field(default_factory=list)

    def shard(self, start: int) -> ShardRecord | None:
        return next((s for s in self.shards if s.start == start), None)

    def chunks_done(self) -> int:
        return sum(s.stop - s.start for s in self.shards)

    @property
    def label(self) -> str:
        return self.name or self.spec


@dataclass
class Manifest:
    data: DataIdentity
    teachers: list[TeacherRecord]
    top_k: int
    tail: float
    shard_chunks: int
    teacher_options: dict[str, Any]
    conversion: dict[str, Any] = field(default_factory=conversion_rule)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    # ------------------------------------------------------------------------------------------------------
    def shard_ranges(self) -> list[tuple[int, int]]:
        """Chunk ranges [start, stop) of every shard (the same for each teacher); known once the first pass over
        the data has ended (before that, an empty list)."""
        if not self.data.complete:
            return []
        n, step = self.data.num_chunks, self.shard_chunks
        return [(s, min(s + step, n)) for s in range(0, n, step)]

    def text_hashes(self) -> dict[int, str]:
        """Shard start → hash of its chunk texts, from every teacher's finished shards (they must all agree)."""
        out: dict[int, str] = {}
        for record in self.teachers:
            for s in record.shards:
                out.setdefault(s.start, s.text_sha256)
        return out

    def shard_file(self, teacher_index: int, start: int) -> str:
        return f"{self.teachers[teacher_index].dir}/shard-{start // self.shard_chunks:05d}.safetensors"

    def is_complete(self, teacher_index: int) -> bool:
        record = self.teachers[teacher_index]
        return self.data.complete and all(record.shard(s) is not None for s, _ in self.shard_ranges())

    def text_bytes(self) -> int:
        """Text bytes covered: all of them once the first pass has ended, else those of the shards so far."""
        if self.data.num_bytes is not None:
            return self.data.num_bytes
        return max((sum(s.rows for s in t.shards) for t in self.teachers), default=0)

    def chunks_covered(self) -> int:
        if self.data.num_chunks is not None:
            return self.data.num_chunks
        return max((t.chunks_done() for t in self.teachers), default=0)

    def stored_bytes(self, teacher_index: int | None = None) -> int:
        teachers = self.teachers if teacher_index is None else [self.teachers[teacher_index]]
        return sum(s.bytes for t in teachers for s in t.shards)

    def summary(self) -> dict[str, Any]:
        """Storage facts: bytes stored per text byte (total and per teacher), entries per defined row."""
        text = max(1, self.text_bytes())
        per = []
        for i, t in enumerate(self.teachers):
            rows = sum(s.rows for s in t.shards)
            entries = sum(s.entries for s in t.shards)
            per.append({"teacher": t.label, "spec": t.spec, "bytes": self.stored_bytes(i),
                        "bytes_per_text_byte": round(self.stored_bytes(i) / text, 3),
                        "entries_per_row": round(entries / max(1, rows), 3)})
        return {"text_bytes": self.text_bytes(), "chunks": self.chunks_covered(), "top_k": self.top_k,
                "tail": self.tail, "bytes": self.stored_bytes(),
                "bytes_per_text_byte": round(self.stored_bytes() / text, 3), "teachers": per}

    # ------------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = self.data.to_json()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Manifest":
        teachers = [TeacherRecord(**{**t, "shards": [ShardRecord(**s) for s in t.get("shards", [])]})
                    for t in raw["teachers"]]
        return cls(**{**raw, "data": DataIdentity(**raw["data"]), "teachers": teachers})


def teacher_dir(index: int, spec: str) -> str:
    """Folder name of teacher ``index``: ``t<i>-<slug>`` (the index keeps two identical specs apart)."""
    last = spec.split("?")[0].rstrip("/").split("/")[-1]  # a folder or file spec: its last component
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.")
    return f"t{index}-{slug[:40] or 'teacher'}"


class CacheFormatError(ConfigError):
    """A cache written in another format version than this mergekd reads. A separate type so that the owner of a
    derived cache (ablate's grid cache and its subset views) can rebuild it, where a user's cache is refused."""


def read_manifest(cache: Path | str) -> Manifest:
    """The manifest of ``cache``; a missing or unreadable one is a ConfigError naming the fix."""
    path = Path(cache) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{cache} is not a byte cache (no {MANIFEST}); build it with `mergekd cache --teachers "
                          f"... --data ... --out {cache}`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); rebuild the cache with `mergekd cache`") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise ConfigError(f"{path} is not a mergekd byte-cache manifest")
    version = raw.get("format_version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise CacheFormatError(f"cache {cache} was captured by an older mergekd (format version {version}; this "
                               f"mergekd reads version {FORMAT_VERSION}); re-capture it with `mergekd cache` into a "
                               f"new --out (or delete {cache} first)")
    if version != FORMAT_VERSION:
        raise CacheFormatError(f"cache {cache} has format version {version} but this mergekd reads "
                               f"version {FORMAT_VERSION}; rebuild it with `mergekd cache` into a new --out")
    try:
        return Manifest.from_json(raw)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is incomplete or from another mergekd ({exc}); rebuild the cache") from None


def write_manifest(cache: Path | str, manifest: Manifest) -> None:
    """Write atomically: a reader or a resumed capture sees the old manifest or the new one, never half."""
    cache = Path(cache)
    manifest.updated = time.time()
    write_json(cache / MANIFEST, manifest.to_json(), allow_nan=True)


# ------------------------------------------------------------------------------------------------------------
# Matching a cache against a run: each check raises a ConfigError that names the mismatch and both values.


def check_rule(manifest: Manifest, cache: Path | str) -> None:
    here = conversion_rule()
    if manifest.conversion != here:
        raise ConfigError(f"conversion rule mismatch: cache {cache} was captured with {manifest.conversion} but this "
                          f"mergekd converts with {here}; rebuild the cache with `mergekd cache`")


def check_teachers(manifest: Manifest, specs: list[str], cache: Path | str) -> None:
    cached = [t.spec for t in manifest.teachers]
    if list(specs) != cached:
        same_set = sorted(specs) == sorted(cached)
        what = "teacher order" if same_set else "teachers"
        raise ConfigError(f"{what} mismatch: cache {cache} holds teachers {cached} (in this order) but the run asks "
                          f"for {list(specs)}; pass the same --teachers, or capture a new cache")


# Teacher options that change the targets, and how each is read from a captured teacher's ``describe``.
TARGET_OPTIONS = ("byte_rule", "max_length", "overlap", "dtype")


def check_teacher_options(manifest: Manifest, overrides: dict[str, Any], cache: Path | str) -> None:
    """The run's teacher options (``overrides`` from its flags, each spec's own ``?options`` on top) must be the
    options the cache's targets were captured with. An option the run leaves at its default (None) takes the
    cache's value, except ``byte_rule``, whose default is a rule. A mismatch names the option, both values and
    the fix."""
    from ..teachers.registry import resolve_teacher

    for record in manifest.teachers:
        if not record.describe:
            continue
        wanted = resolve_teacher(record.spec, overrides).options
        for name in TARGET_OPTIONS:
            mine, theirs = getattr(wanted, name), record.describe.get(name)
            if name == "byte_rule":
                theirs = theirs or manifest.teacher_options.get("byte_rule", "canonical")
            elif mine is None:
                continue
            if theirs is not None and str(mine) != str(theirs):
                flag = {"max_length": "teacher-max-length"}.get(name, name.replace("_", "-"))
                raise ConfigError(f"{name} mismatch: cache {cache} holds teacher {record.label} captured with "
                                  f"{name}={theirs}, but this run asks for {name}={mine}; pass --{flag} {theirs} "
                                  "or capture a new cache with the run's settings")


def check_source(manifest: Manifest, source, seq_bytes: int, cache: Path | str) -> None:
    """The cheap part of matching data: the same chunk size and the same reading options (text field, split, txt
    mode, ...). The path may differ (a moved or renamed file with the same text is the same data): the chunk
    hashes decide, see :func:`check_chunks`."""
    cached = manifest.data
    if int(seq_bytes) != cached.seq_bytes:
        raise ConfigError(f"seq_bytes mismatch: cache {cache} holds chunks of {cached.seq_bytes} bytes but the run "
                          f"uses seq_bytes={seq_bytes}; use --seq-bytes {cached.seq_bytes} or capture a new "
                          "cache")
    theirs = reading_options(cache_source(cached.source, "cache data source"))
    mine = reading_options(source)
    for name in theirs:
        if theirs[name] != mine.get(name):
            raise ConfigError(f"data source mismatch: cache {cache} was captured from {cached.source} with "
                              f"{name}={theirs[name]}, but the data {source.to_spec()} is read with "
                              f"{name}={mine.get(name)}; use the same option, or capture a new cache")


def check_limits_match(manifest: Manifest, limit_bytes: int | None, limit_chunks: int | None,
                       cache: Path | str, fix: str = "another --out for a new cache") -> None:
    """A resumed capture (or a run that states limits) must ask for the limits the cache was captured with."""
    cached = manifest.data
    for name, mine in (("limit_bytes", limit_bytes), ("limit_chunks", limit_chunks)):
        theirs = getattr(cached, name)
        if mine != theirs:
            asked = "no limit" if mine is None else f"{name}={mine}"
            raise ConfigError(f"{name} mismatch: cache {cache} covers {cached.covers()}, but this asks for "
                              f"{asked}; use the same limit, or {fix}")


def data_mismatch(cache: Path | str, manifest: Manifest, source, start: int, stop: int) -> ConfigError:
    return ConfigError(f"data mismatch: chunks [{start}, {stop}) of {source.to_spec()} differ from those cache "
                       f"{cache} was captured from ({manifest.data.source}; chunk texts are hashed per shard); use "
                       "the data the cache was captured from, or capture a new cache")


def check_shard_texts(manifest: Manifest, source, cache: Path | str, stop: int, keep=()) -> tuple[ChunkHasher, dict]:
    """Stream chunks ``[0, stop)`` of ``source`` and check each finished shard's text hash on the way (the first
    shard that differs is an error naming its chunk range). Returns the hasher of those chunks (count, bytes,
    hash) and the texts of the indices in ``keep``. Memory holds one shard's chunk texts at a time."""
    keep = {int(k) for k in keep}
    expected = manifest.text_hashes()
    texts: dict[int, str] = {}
    total, shard = ChunkHasher(), ChunkHasher()
    start = 0
    for n, chunk in covered_chunks(source, manifest.data.seq_bytes, stop=stop):
        total.update(chunk)
        shard.update(chunk)
        if n in keep:
            texts[n] = chunk
        if n + 1 == min(start + manifest.shard_chunks, stop):
            if expected.get(start, shard.hexdigest()) != shard.hexdigest():
                raise data_mismatch(cache, manifest, source, start, n + 1)
            start, shard = n + 1, ChunkHasher()
    return total, texts


def check_chunks(manifest: Manifest, source, cache: Path | str, *, keep=(), trust_files: bool = False,
                 say=None) -> dict[int, str]:
    """Stream the chunks a complete cache covers (``[0, num_chunks)`` of ``source``, nothing after them) and
    check them against the shards' text hashes and the overall chunk hash; returns the texts of the chunk
    indices in ``keep``. ``trust_files``: skip the pass when the local files are exactly those recorded (same
    paths, sizes and mtimes) and no text is asked for. Needs the first pass to have ended (not every teacher)."""
    check_first_pass(manifest, cache)
    ident = manifest.data
    if trust_files and not keep and same_files(ident, source):
        return {}
    if say is not None:
        say(f"cache {cache}: checking that {source.to_spec()} starts with the {ident.num_chunks} cached chunks "
            f"({ident.num_bytes} bytes)")
    total, texts = check_shard_texts(manifest, source, cache, ident.num_chunks, keep)
    if total.count < ident.num_chunks:
        raise ConfigError(f"data mismatch: {source.to_spec()} has only {total.count} chunks of at most "
                          f"{ident.seq_bytes} bytes, but cache {cache} covers {ident.covers()}; use the data the "
                          "cache was captured from, or capture a new cache")
    if total.hexdigest() != ident.chunks_sha256:
        raise data_mismatch(cache, manifest, source, 0, ident.num_chunks)
    return texts


def check_data(manifest: Manifest, data, seq_bytes: int, cache: Path | str, *, keep=(), trust_files: bool = False,
               say=None) -> dict[int, str]:
    """:func:`check_source` then :func:`check_chunks` for ``data`` (a source, a spec string or a Path)."""
    source = cache_source(data)
    check_source(manifest, source, seq_bytes, cache)
    return check_chunks(manifest, source, cache, keep=keep, trust_files=trust_files, say=say)


def check_first_pass(manifest: Manifest, cache: Path | str) -> None:
    """The chunk count is known only once the capture's first pass over the data has ended."""
    if not manifest.data.complete:
        done = max((t.chunks_done() for t in manifest.teachers), default=0)
        raise ConfigError(f"cache {cache} is incomplete: its capture has not finished the first pass over "
                          f"{manifest.data.source} ({done} chunks so far); re-run `mergekd cache` with the same "
                          "arguments to finish it")


def check_complete(manifest: Manifest, cache: Path | str) -> None:
    check_first_pass(manifest, cache)
    for i, record in enumerate(manifest.teachers):
        if not manifest.is_complete(i):
            raise ConfigError(f"cache {cache} is incomplete: teacher {record.label} has {record.chunks_done()} of "
                              f"{manifest.data.num_chunks} chunks; re-run `mergekd cache` with the same arguments "
                              "to finish it")


def check_capture_options(manifest: Manifest, top_k: int, tail: float, shard_chunks: int,
                          cache: Path | str) -> None:
    """A resumed capture must use the options the finished shards were written with."""
    for name, mine, theirs in (("top_k", top_k, manifest.top_k), ("tail", tail, manifest.tail),
                               ("shard_chunks", shard_chunks, manifest.shard_chunks)):
        if mine != theirs:
            raise ConfigError(f"{name} mismatch: {cache} holds a cache captured with {name}={theirs}, this capture "
                              f"asks for {name}={mine}; use the same value, or another --out for a new cache")
