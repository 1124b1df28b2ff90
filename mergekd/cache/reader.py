"""Reading a cache: lazily loaded, checksum-verified shards behind a small LRU.

Why lazy + LRU: a training run touches chunks in a shuffled order, so any shard may be needed at any step, but
holding a large corpus's cache in memory is not necessary (a 64-chunk shard decodes one chunk in well under a
millisecond). Every shard read from disk is verified against the manifest's sha256 first, so a corrupt file
raises :class:`~mergekd.cache.shard.CorruptShardError` (naming the file and the fix) and is never used.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import ConfigError
from .manifest import Manifest, ShardRecord
from .shard import Shard, load_shard


class ShardStore:
    """``chunk(teacher, index)`` → dense (logprobs [N, 257], mask [N]) for any chunk of a complete cache."""

    def __init__(self, cache: Path | str, manifest: Manifest, max_shards: int = 8):
        if max_shards < 1:
            raise ConfigError(f"max_shards={max_shards} must be at least 1")
        self.cache = Path(cache)
        self.manifest = manifest
        self.max_shards = max_shards
        self._records: list[dict[int, ShardRecord]] = [{s.start: s for s in t.shards} for t in manifest.teachers]
        self._lru: OrderedDict[tuple[int, int], Shard] = OrderedDict()
        self.disk_reads = 0  # shards loaded (and verified) from disk so far

    @property
    def num_chunks(self) -> int:
        return self.manifest.data.num_chunks

    def shard(self, teacher: int, chunk: int) -> Shard:
        """The loaded shard of ``teacher`` holding ``chunk`` (from the LRU, else read and verified from disk)."""
        if not 0 <= chunk < self.num_chunks:
            raise ConfigError(f"chunk index {chunk} is outside the cache's {self.num_chunks} chunks")
        start = chunk - chunk % self.manifest.shard_chunks
        key = (teacher, start)
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
            return hit
        record = self._records[teacher].get(start)
        if record is None:
            raise ConfigError(f"cache {self.cache} has no shard for chunk {chunk} of teacher "
                              f"{self.manifest.teachers[teacher].label}; re-run `mergekd cache` to finish it")
        shard = load_shard(self.cache / record.file, record.sha256, start=record.start,
                           num_chunks=record.stop - record.start, teacher=self.manifest.teachers[teacher].label)
        self.disk_reads += 1
        self._lru[key] = shard
        while len(self._lru) > self.max_shards:
            self._lru.popitem(last=False)
        return shard

    def chunk(self, teacher: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shard(teacher, chunk).chunk(chunk)
