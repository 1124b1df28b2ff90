"""Identities a cache is keyed on: the data (source + chunking + the chunk texts), the teacher weights, the rule.

Why chunk hashes and not file hashes: a cache is only valid for the exact chunks the distillation loop will look
up by index, and a corpus is streamed (a 50 GB glob of parquet shards is never read whole, let alone twice just
to hash it). So the data is identified by what the cache covers: the source's reading options, ``seq_bytes``,
the limits, and — once the first full pass has ended — the number of chunks, their bytes and a sha256 of the
chunk texts (each shard also records the hash of its own chunks). A renamed or moved data file with the same
text is the same data; an edited one is not, even at the same path.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ..bytes.rule import RULE_NAME as CONVERSION_RULE
from ..bytes.rule import RULE_VERSION as CONVERSION_RULE_VERSION
from ..errors import ConfigError

_READ_BLOCK = 1 << 20


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ChunkHasher:
    """Incremental :func:`chunks_sha256`: feed chunks one at a time (a corpus is never held as a list)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0
        self.bytes = 0

    def update(self, chunk: str) -> int:
        """Add one chunk; returns its size in UTF-8 bytes."""
        raw = chunk.encode("utf-8")
        self._h.update(len(raw).to_bytes(8, "little"))
        self._h.update(raw)
        self.count += 1
        self.bytes += len(raw)
        return len(raw)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def chunks_sha256(chunks: Iterable[str]) -> str:
    """Hash of the chunk texts *and* their boundaries (each chunk is length-prefixed)."""
    h = ChunkHasher()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, raw bytes), in name order.

    Computed once per capture (≈ 1 s per GB); identical weights loaded from GGUF or from the safetensors copy
    hash the same because both hold the same dequantised float32 tensors.
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer, no copy
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------ the data


@dataclass
class DataIdentity:
    """What the chunks of a cache are.

    ``source`` is the data spec the capture read (:meth:`mergekd.sources.DataSource.to_spec`, without its
    ``shuffle_buffer``: a cache is captured in stream order). ``limit_bytes``/``limit_chunks`` are the capture's
    limits (None: everything). ``num_chunks``, ``num_bytes`` and ``chunks_sha256`` are None until the first
    teacher's pass over the data has ended; ``complete`` says it has. ``files`` (local sources only: resolved
    path, size and mtime of each file, in stream order) lets a rerun skip re-reading unchanged data; it is a
    shortcut, never a reason to refuse (the chunk hashes decide).
    """

    source: str
    seq_bytes: int
    limit_bytes: int | None = None
    limit_chunks: int | None = None
    complete: bool = False
    num_chunks: int | None = None
    num_bytes: int | None = None
    chunks_sha256: str | None = None
    files: list[list[Any]] | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def covers(self) -> str:
        """``the first 1234 chunks`` / ``all 1234 chunks`` / ``the first chunks up to 50000000 bytes`` ..."""
        limits = [f"limit_bytes={self.limit_bytes}" if self.limit_bytes is not None else "",
                  f"limit_chunks={self.limit_chunks}" if self.limit_chunks is not None else ""]
        limits = ", ".join(x for x in limits if x)
        if self.complete:
            what = f"the first {self.num_chunks} chunks" if limits else f"all {self.num_chunks} chunks"
        else:
            what = "an unfinished pass"
        return f"{what} of {self.source} ({limits})" if limits else f"{what} of {self.source}"


def cache_source(data, where: str = "--data"):
    """The :class:`~mergekd.sources.DataSource` a cache reads, from a source, a spec string or a Path; prompt and
    chat sources are refused (a cache holds plain-text chunks). Its ``shuffle_buffer`` is dropped: a cache is
    captured, and looked up, in stream order."""
    from ..sources import as_source

    source = as_source(data)
    if source.kind != "text":
        what = "chats" if source.kind == "messages" else "prompt/response pairs"
        raise ConfigError(f"{where} {source.to_spec()}: holds {what}, but a byte cache covers plain-text chunks; "
                          "give a plain-text source (text_field), or drop the cache (teachers run online)")
    return source.model_copy(update={"shuffle_buffer": 0}) if source.shuffle_buffer else source


def reading_options(source) -> dict:
    """The options that decide which text a source yields (everything but its path and shuffle buffer)."""
    return {k: v for k, v in source.model_dump().items() if k not in ("path", "shuffle_buffer")}


def file_fingerprint(source) -> list[list[Any]] | None:
    """``[[resolved path, size, mtime_ns], ...]`` of a local source's files (None for a hub dataset)."""
    from ..sources import resolve

    plan = resolve(source)
    if plan.format == "hub":
        return None
    out = []
    for shard in plan.shards:
        path = Path(shard)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def check_limits(limit_bytes: int | None, limit_chunks: int | None) -> None:
    for name, value in (("limit_bytes", limit_bytes), ("limit_chunks", limit_chunks)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be at least 1 (omit it to capture everything)")


def covered_chunks(source, seq_bytes: int, *, limit_bytes: int | None = None, limit_chunks: int | None = None,
                   stop: int | None = None) -> Iterator[tuple[int, str]]:
    """``(n, chunk)`` in stream order (unshuffled), lazily, as far as a cache covers:

    - ``limit_chunks=N``: the first N chunks;
    - ``limit_bytes=B``: chunks until their UTF-8 bytes add up to at least B — the chunk that reaches or crosses
      B is included (as ``load_chunks(limit_bytes=)``), so a capture covers between B and B + seq_bytes − 1
      bytes unless the data is shorter;
    - both: whichever is reached first; ``stop``: never chunk ``stop`` or later.
    """
    from ..sources import iter_indexed_chunks

    if stop is not None and stop <= 0:
        return
    total = 0
    for n, chunk in iter_indexed_chunks(source, seq_bytes, shuffle=False):
        yield n, chunk
        total += len(chunk.encode("utf-8"))
        if (stop is not None and n + 1 >= stop) or (limit_chunks is not None and n + 1 >= limit_chunks) or \
                (limit_bytes is not None and total >= limit_bytes):
            return  # never reads a record past the last chunk it yields


def data_identity(data, seq_bytes: int, *, limit_bytes: int | None = None,
                  limit_chunks: int | None = None) -> DataIdentity:
    """The identity of a capture not yet started (chunk counts and hashes unknown until its first pass ends)."""
    check_limits(limit_bytes, limit_chunks)
    source = cache_source(data)
    return DataIdentity(source=source.to_spec(), seq_bytes=int(seq_bytes), limit_bytes=limit_bytes,
                        limit_chunks=limit_chunks)


def conversion_rule() -> dict:
    return {"rule": CONVERSION_RULE, "version": CONVERSION_RULE_VERSION}


def same_files(ident: DataIdentity, source) -> bool:
    """Whether a local source's files are exactly those (path, size, mtime) recorded: then they were not edited
    since, and re-reading them to check their chunks can be skipped."""
    if not ident.files:
        return False
    try:
        return file_fingerprint(source) == ident.files
    except (ConfigError, OSError):
        return False


__all__ = ["ChunkHasher", "DataIdentity", "cache_source", "check_limits", "chunks_sha256", "conversion_rule",
           "covered_chunks", "data_identity", "file_fingerprint", "reading_options", "same_files", "sha256_bytes",
           "sha256_file", "weights_sha256"]

