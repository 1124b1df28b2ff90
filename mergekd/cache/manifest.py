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
from .identity import DataIdentity, conversion_rule

MANIFEST = "manifest.json"
FORMAT_NAME = "mergekd-byte-cache"
FORMAT_VERSION = 1


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
        """Chunk ranges [start, stop) of every shard (the same for each teacher)."""
        n, step = self.data.num_chunks, self.shard_chunks
        return [(s, min(s + step, n)) for s in range(0, n, step)]

    def shard_file(self, teacher_index: int, start: int) -> str:
        return f"{self.teachers[teacher_index].dir}/shard-{start // self.shard_chunks:05d}.safetensors"

    def is_complete(self, teacher_index: int) -> bool:
        record = self.teachers[teacher_index]
        return all(record.shard(s) is not None for s, _ in self.shard_ranges())

    def text_bytes(self) -> int:
        return self.data.num_bytes

    def stored_bytes(self, teacher_index: int | None = None) -> int:
        teachers = self.teachers if teacher_index is None else [self.teachers[teacher_index]]
        return sum(s.bytes for t in teachers for s in t.shards)

    def summary(self) -> dict[str, Any]:
        """Storage facts: bytes stored per text byte (total and per teacher), entries per defined row."""
        text = max(1, self.data.num_bytes)
        per = []
        for i, t in enumerate(self.teachers):
            rows = sum(s.rows for s in t.shards)
            entries = sum(s.entries for s in t.shards)
            per.append({"teacher": t.label, "spec": t.spec, "bytes": self.stored_bytes(i),
                        "bytes_per_text_byte": round(self.stored_bytes(i) / text, 3),
                        "entries_per_row": round(entries / max(1, rows), 3)})
        return {"text_bytes": self.data.num_bytes, "chunks": self.data.num_chunks, "top_k": self.top_k,
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
    if raw.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"cache {cache} has format version {raw.get('format_version')} but this mergekd reads "
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


def check_data(manifest: Manifest, ident: DataIdentity, cache: Path | str) -> None:
    cached = manifest.data
    if ident.seq_bytes != cached.seq_bytes:
        raise ConfigError(f"seq_bytes mismatch: cache {cache} holds chunks of {cached.seq_bytes} bytes but the run "
                          f"uses seq_bytes={ident.seq_bytes}; use --seq-bytes {cached.seq_bytes} or capture a new "
                          "cache")
    if ident.sha256 != cached.sha256:
        raise ConfigError(f"data mismatch: cache {cache} was captured from {cached.path} (sha256 "
                          f"{cached.sha256[:12]}…) but the run's data {ident.path} has sha256 "
                          f"{ident.sha256[:12]}…; "
                          "use the same data file or capture a new cache")
    if ident.chunks_sha256 != cached.chunks_sha256 or ident.num_chunks != cached.num_chunks:
        raise ConfigError(f"data chunks mismatch: the run cuts {ident.path} into {ident.num_chunks} chunks that "
                          f"differ from the cache's {cached.num_chunks} (a different mergekd chunker?); capture a "
                          "new cache")


def check_complete(manifest: Manifest, cache: Path | str) -> None:
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
