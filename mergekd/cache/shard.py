"""Shard files: one teacher's sparse rows for a contiguous range of chunks, as safetensors, checksummed.

Why safetensors: no pickle (a cache can come from someone else), zero-copy loads, and the tensors stay
inspectable with any safetensors reader. Tensors of a shard (see :mod:`mergekd.cache.codec` for their meaning)::

    count       uint8 [R]      entries per byte row (0 = undefined row), R = text bytes of the shard's chunks
    tail        uint8 [R]      tail-mass code per row
    entry_byte  uint8 [E]      byte value of each entry (rows in order)
    entry_code  uint8 [E]      log-prob code of each entry
    background  float32 [8, 256]  tail shapes of this shard, by class of a row's top byte
    chunk_bytes int64 [C]      bytes (rows) of each chunk, in chunk order

A shard is written to a temporary file and renamed into place, and its sha256 goes into the manifest; a reader
checks the sha256 of every shard it loads from disk and refuses a mismatch, so a torn or edited file is never
used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import MergekdError
from .codec import NUM_CLASSES, EncodedRows, background_from, decode_rows
from .identity import sha256_bytes

TENSORS = ("count", "tail", "entry_byte", "entry_code", "background", "chunk_bytes")


class CorruptShardError(MergekdError):
    """A shard file is missing, truncated or altered (its sha256 differs from the manifest's)."""


def _corrupt(path: Path, teacher: str, reason: str) -> CorruptShardError:
    return CorruptShardError(f"cache shard {path} (teacher {teacher}) is corrupt: {reason}; it was not used. Re-run "
                             "`mergekd cache` with the same arguments to rebuild it")


def encode_shard(rows: EncodedRows, chunk_bytes: list[int], metadata: dict[str, str]) -> bytes:
    """The serialized shard (safetensors bytes)."""
    tensors = {
        "count": rows.count.contiguous(),
        "tail": rows.tail.contiguous(),
        "entry_byte": rows.entry_byte.contiguous(),
        "entry_code": rows.entry_code.contiguous(),
        "background": background_from(rows.tail_mass),
        "chunk_bytes": torch.tensor(chunk_bytes, dtype=torch.int64),
    }
    # one metadata key holding sorted JSON: safetensors does not keep key order, and identical shards must be
    # byte-identical (same sha256) whether captured in one go or resumed
    return st_save(tensors, metadata={"mergekd": json.dumps(metadata, sort_keys=True)})


def file_matches(path: Path, sha256: str) -> bool:
    """True when ``path`` exists and its content hashes to ``sha256`` (used to skip finished shards)."""
    try:
        return sha256_bytes(path.read_bytes()) == sha256
    except OSError:
        return False


@dataclass
class Shard:
    """A loaded, verified shard; :meth:`chunk` decodes one chunk's rows."""

    start: int  # first chunk index
    count: torch.Tensor
    tail: torch.Tensor
    entry_byte: torch.Tensor
    entry_code: torch.Tensor
    background: torch.Tensor
    row_start: torch.Tensor  # int64 [C+1]: first row of each chunk
    entry_start: torch.Tensor  # int64 [R+1]: first entry of each row

    @property
    def num_chunks(self) -> int:
        return int(self.row_start.numel()) - 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.count, self.tail, self.entry_byte, self.entry_code,
                                                          self.background, self.row_start, self.entry_start))

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense (logprobs float32 [N, 257], mask bool [N]) of global chunk ``index``."""
        local = index - self.start
        if not 0 <= local < self.num_chunks:
            last = self.start + self.num_chunks - 1
            raise IndexError(f"chunk {index} is not in this shard (chunks {self.start}..{last})")
        r0, r1 = int(self.row_start[local]), int(self.row_start[local + 1])
        e0, e1 = int(self.entry_start[r0]), int(self.entry_start[r1])
        return decode_rows(self.count[r0:r1], self.tail[r0:r1], self.entry_byte[e0:e1], self.entry_code[e0:e1],
                           self.background)

    def chunk_num_bytes(self, index: int) -> int:
        local = index - self.start
        return int(self.row_start[local + 1] - self.row_start[local])


def _offsets(sizes: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes.to(torch.int64), 0)])


def load_shard(path: Path, sha256: str, *, start: int, num_chunks: int, teacher: str) -> Shard:
    """Read, verify (sha256 and shapes) and parse one shard; any problem is a :class:`CorruptShardError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _corrupt(path, teacher, "the file is missing") from None
    except OSError as exc:
        raise _corrupt(path, teacher, f"it cannot be read ({exc.strerror})") from None
    digest = sha256_bytes(raw)
    if digest != sha256:
        raise _corrupt(path, teacher, f"sha256 {digest[:12]}… differs from the manifest's {sha256[:12]}…")
    try:
        t = st_load(raw)
    except Exception as exc:  # a checksum-valid file that is not safetensors: a bug or a forged manifest
        raise _corrupt(path, teacher, f"not a safetensors file ({exc})") from None
    missing = [name for name in TENSORS if name not in t]
    if missing:
        raise _corrupt(path, teacher, f"tensors {missing} are missing")
    row_start = _offsets(t["chunk_bytes"])
    entry_start = _offsets(t["count"])
    if (t["chunk_bytes"].numel() != num_chunks or int(row_start[-1]) != t["count"].numel()
            or int(entry_start[-1]) != t["entry_byte"].numel() or t["entry_code"].shape != t["entry_byte"].shape
            or t["tail"].shape != t["count"].shape or t["background"].shape != (NUM_CLASSES, 256)):
        raise _corrupt(path, teacher, "its tensors do not fit together (rows, entries and chunks disagree)")
    return Shard(start=start, count=t["count"], tail=t["tail"], entry_byte=t["entry_byte"],
                 entry_code=t["entry_code"], background=t["background"], row_start=row_start,
                 entry_start=entry_start)
