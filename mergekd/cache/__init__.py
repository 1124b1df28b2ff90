"""Teacher byte cache: capture each teacher's next-byte distributions once, distil from them many times.

    from mergekd.cache import capture_cache, CachedSignal, verify_cache
    capture_cache("runs/cache", ["smollm2-135m", "gemma3-270m"], "train.txt", top_k=16, seq_bytes=512)
    capture_cache("runs/c50", ["smollm2-135m"], "corpus/*.parquet", limit_bytes=50_000_000)  # streamed, resumable
    signal = CachedSignal("runs/cache", cfg)          # cfg: the DistillConfig of the run (matched against the cache)
    mixed, mask = signal(texts, chunk_indices)         # like TeacherSignal, with no teacher in memory
    report = verify_cache("runs/cache", sample=8)      # checksums + mean KL(dense ‖ cached) per teacher

Modules: :mod:`~mergekd.cache.codec` (sparse rows ⇄ dense rows), :mod:`~mergekd.cache.shard` (files, checksums),
:mod:`~mergekd.cache.manifest` (what was captured, matching), :mod:`~mergekd.cache.identity` (hashes),
:mod:`~mergekd.cache.capture`, :mod:`~mergekd.cache.reader` (lazy LRU), :mod:`~mergekd.cache.signal`,
:mod:`~mergekd.cache.verify`.
"""

from .capture import capture_cache
from .codec import LOGPROB_BOUND, CacheFormatError, decode_rows, encode_rows, kl_per_row
from .manifest import Manifest, read_manifest
from .shard import CorruptShardError
from .signal import CachedSignal
from .verify import check_checksums, verify_cache

__all__ = [
    "LOGPROB_BOUND", "CacheFormatError", "CachedSignal", "CorruptShardError", "Manifest", "capture_cache",
    "check_checksums", "decode_rows", "encode_rows", "kl_per_row", "read_manifest", "verify_cache",
]
