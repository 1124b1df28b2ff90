"""CachedSignal: the teacher signal of a distillation run, read from a byte cache instead of live teachers.

Same contract as every source (:mod:`mergekd.signal`) and as :class:`mergekd.distill.signal.TeacherSignal`
(``signal(texts, indices)``, ``per_teacher``, ``mixer``, ``names``; chat ``views`` are refused: a cache holds
plain-text chunks), so the loop cannot tell the difference — except that no teacher is in memory and a step
costs a few milliseconds of decoding instead of K forward passes. The cache is matched against the run when it
is opened: the same chunking (``seq_bytes``, the source's reading options), the same teachers in the same order,
the same conversion rule and teacher options, every shard present, and the same chunk texts — checked by
streaming the run's data over the chunks the cache covers (``[0, num_chunks)``, one shard of text in memory at a
time; nothing after them is read); any difference is a ConfigError that names it.

The cache covers chunks ``[0, num_chunks)`` of the data's stream (in stream order, unshuffled): a run trains on
those chunk indices and looks their rows up by index (``signal(texts, indices)``).
"""

from __future__ import annotations

from pathlib import Path

from ..bytes import ByteTargets
from ..errors import ConfigError
from ..signal import MixingSignal
from .manifest import (Manifest, check_complete, check_data, check_limits_match, check_rule, check_teacher_options,
                       check_teachers, read_manifest)
from .reader import ShardStore


class CachedSignal(MixingSignal):
    """Teacher targets from ``cache`` for the run ``cfg`` (a DistillConfig or anything with ``teachers``,
    ``data``, ``seq_bytes`` and ``mix``).

    ``cfg.teachers`` may be empty: the run then uses the cache's teachers. ``cfg.data`` may be a Path, a spec
    string or a :class:`~mergekd.sources.DataSource`; only its first :attr:`num_chunks` chunks are read (once, to
    check them). If ``cfg`` has ``limit_bytes``/``limit_chunks`` set, they must be the cache's. Without ``cfg``
    nothing is matched (tools that inspect a cache); ``mixer`` then defaults to ``linear``. ``progress(line)``
    is told, in one line, when the data check starts.
    """

    def __init__(self, cache: Path | str, cfg=None, *, mixer=None, max_shards: int = 8, progress=None):
        self.cache = Path(cache)
        self.manifest: Manifest = read_manifest(self.cache)
        check_rule(self.manifest, self.cache)
        if cfg is not None:
            if cfg.teachers:
                check_teachers(self.manifest, list(cfg.teachers), self.cache)
            if hasattr(cfg, "teacher_overrides"):
                check_teacher_options(self.manifest, cfg.teacher_overrides(), self.cache)
        check_complete(self.manifest, self.cache)
        if cfg is not None:
            limits = (getattr(cfg, "limit_bytes", None), getattr(cfg, "limit_chunks", None))
            if limits != (None, None):
                check_limits_match(self.manifest, *limits, self.cache, fix="capture a new cache with these limits")
            check_data(self.manifest, cfg.data, cfg.seq_bytes, self.cache, say=progress)
        if mixer is None:
            from ..mix import build_mixer

            mixer = build_mixer(cfg.mix if cfg is not None else "linear")
        self.mixer = mixer
        self.store = ShardStore(self.cache, self.manifest, max_shards=max_shards)

    @property
    def num_chunks(self) -> int:
        """Chunks the cache covers: a run trains on chunk indices ``[0, num_chunks)`` of the data's stream."""
        return self.manifest.data.num_chunks

    @property
    def names(self) -> list[str]:
        return [t.label for t in self.manifest.teachers]

    @property
    def specs(self) -> list[str]:
        return [t.spec for t in self.manifest.teachers]

    def per_teacher(self, texts: list[str], indices: list[int] | None = None,
                    views=None) -> list[list[ByteTargets]]:
        """K teachers × B texts of dense ByteTargets, reconstructed from the cache (``end_logprobs`` is None)."""
        if views is not None and any(v is not None for v in views):
            raise ConfigError(f"cache {self.cache}: a byte cache holds teacher rows of plain-text chunks; chat views "
                              "(each teacher conditioning on its own chat template) need online teachers (drop "
                              "--cache)")
        if indices is None:
            raise ConfigError("a byte cache is looked up by chunk index: call signal(texts, chunk_indices)")
        if len(indices) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(indices)} chunk indices")
        raw = [t.encode("utf-8") for t in texts]
        out = []
        for k in range(len(self.manifest.teachers)):
            per_text = []
            for data, index in zip(raw, indices):
                logprobs, mask = self.store.chunk(k, int(index))
                if logprobs.shape[0] != len(data):
                    raise ConfigError(f"chunk {index} has {logprobs.shape[0]} bytes in cache {self.cache} but the "
                                      f"run's text has {len(data)}: the run's chunks are not the cache's")
                per_text.append(ByteTargets(logprobs=logprobs, mask=mask, text_bytes=data))
            out.append(per_text)
        return out

    def __repr__(self) -> str:
        return f"CachedSignal({str(self.cache)!r}, teachers={self.names})"
