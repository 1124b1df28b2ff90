"""Verify a cache: every shard's checksum, and the reconstruction error against the teachers' dense targets.

Why recompute: the cache is lossy by design (top-k + tail), so "how lossy" is a number users must see before
they trust an ablation run on it. The teachers are run again (one at a time) on a sample of chunks; the report
gives, per teacher, the mean and max KL(dense ‖ cached) in nats per byte over the sample's defined rows, and the
number of rows whose mask differs (should be 0: a nonzero count means the teacher is not the captured one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..teachers.adapter import one_at_a_time
from .codec import kl_per_row
from .identity import weights_sha256
from .manifest import check_complete, check_data, check_rule, check_teachers, read_manifest
from .reader import ShardStore
from .shard import CorruptShardError, file_matches


def check_checksums(cache: Path | str) -> int:
    """Number of shards checked; raises CorruptShardError naming every shard that fails its sha256."""
    cache = Path(cache)
    manifest = read_manifest(cache)
    bad = [f"{cache / s.file} (teacher {t.label})" for t in manifest.teachers for s in t.shards
           if not file_matches(cache / s.file, s.sha256)]
    if bad:
        raise CorruptShardError(f"{len(bad)} cache shard(s) are missing or corrupt (sha256 differs from the manifest): "
                                f"{', '.join(bad)}; re-run `mergekd cache` with the same arguments to rebuild them")
    return sum(len(t.shards) for t in manifest.teachers)


def verify_cache(cache: Path | str, teachers: Sequence[str] | None = None, data=None, *,
                 seq_bytes: int | None = None, sample: int = 8, seed: int = 0, device: str = "cpu",
                 max_length: int | None = None, progress=None) -> dict[str, Any]:
    """Check ``cache`` (against ``teachers``/``data`` when given) and measure its reconstruction error.

    ``data`` (a Path, spec string or DataSource; default: the source recorded in the cache) is streamed once
    over the chunks the cache covers: their texts must hash as captured, and the ``sample`` chunks (a seeded
    random choice) are kept and recomputed by each teacher. ``progress(message)`` is called with one line per
    stage. Returns a JSON-able report (see module docstring).
    """
    cache = Path(cache)
    say = progress or (lambda message: None)
    manifest = read_manifest(cache)
    check_rule(manifest, cache)
    if teachers:
        check_teachers(manifest, list(teachers), cache)
    check_complete(manifest, cache)
    shards = check_checksums(cache)
    say(f"checksums: {shards} shards ok")

    g = torch.Generator().manual_seed(seed)
    picked = sorted(torch.randperm(manifest.data.num_chunks, generator=g)[:max(1, sample)].tolist())
    kept = check_data(manifest, data if data is not None else manifest.data.source,
                      seq_bytes if seq_bytes is not None else manifest.data.seq_bytes, cache, keep=picked)
    say(f"data: the {manifest.data.num_chunks} cached chunks match")
    texts = [kept[i] for i in picked]
    store = ShardStore(cache, manifest, max_shards=2)
    max_length = max_length if max_length is not None else manifest.teacher_options.get("max_length")
    summary = manifest.summary()
    per_teacher = []
    overrides = {"device": device, "max_length": max_length,
                 "byte_rule": manifest.teacher_options.get("byte_rule", "canonical")}
    loaded = one_at_a_time([r.spec for r in manifest.teachers], overrides,
                           before=lambda spec: say(f"recomputing {len(texts)} chunks with {spec} ..."))
    for k, (teacher, record) in enumerate(zip(loaded, manifest.teachers)):
        if weights_sha256(teacher.model) != record.weights_sha256:
            raise ConfigError(f"teacher {record.spec} now has other weights than when cache {cache} was captured; "
                              "its targets cannot be compared (capture the cache again)")
        dense = teacher.byte_targets(texts)
        kls, mismatched = [], 0
        for index, target in zip(picked, dense):
            cached, mask = store.chunk(k, index)
            mismatched += int((mask != target.mask).sum())
            both = mask & target.mask
            kls.append(kl_per_row(target.logprobs, cached, both))
        kl = torch.cat(kls)
        per_teacher.append({"teacher": record.label, "spec": record.spec, "rows": int(kl.numel()),
                            "mean_kl": float(kl.mean()) if kl.numel() else 0.0,
                            "max_kl": float(kl.max()) if kl.numel() else 0.0, "mask_mismatch": mismatched,
                            "bytes_per_text_byte": summary["teachers"][k]["bytes_per_text_byte"]})
    return {"cache": str(cache), "shards": shards, "checksums": "ok", "sample_chunks": picked,
            "top_k": manifest.top_k, "tail": manifest.tail, "bytes_per_text_byte": summary["bytes_per_text_byte"],
            "mean_kl": max(t["mean_kl"] for t in per_teacher), "max_kl": max(t["max_kl"] for t in per_teacher),
            "teachers": per_teacher}
