"""Capture: run each teacher once over the training chunks and write its sparse byte rows, shard by shard.

Why one teacher at a time: memory then holds one teacher (Gemma-3-270m alone is 3.3 GB on CPU), which is the
point of a cache. Why shards recorded one by one: a capture of a large corpus takes hours; killed at any moment,
it resumes at the first shard that is not both listed in the manifest and on disk with the listed sha256, and a
teacher whose shards are all finished is not even loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from ..teachers.adapter import one_at_a_time
from .codec import check_options, encode_rows
from .identity import DataIdentity, data_identity, sha256_bytes, weights_sha256
from .manifest import (
    MANIFEST,
    Manifest,
    ShardRecord,
    TeacherRecord,
    check_capture_options,
    check_data,
    check_rule,
    check_teachers,
    read_manifest,
    teacher_dir,
    write_manifest,
)
from ..io import write_atomic
from .shard import encode_shard, file_matches

ShardCallback = Callable[[int, int, int], None]  # (teacher index, first chunk, stop chunk)


def _open_manifest(out: Path, specs: list[str], ident: DataIdentity, top_k: int, tail: float, shard_chunks: int,
                   options: dict) -> Manifest:
    """The manifest to continue (checked against this capture) or a fresh one."""
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        check_rule(manifest, out)
        check_teachers(manifest, specs, out)
        check_data(manifest, ident, out)
        check_capture_options(manifest, top_k, tail, shard_chunks, out)
        if manifest.teacher_options.get("max_length") != options["max_length"]:
            def shown(v):
                return "the teacher's default" if v is None else f"{v} tokens"

            raise ConfigError(f"max_length mismatch: {out} was captured with teacher windows of "
                              f"{shown(manifest.teacher_options.get('max_length'))}, this capture asks for "
                              f"{shown(options['max_length'])}; pass the same --teacher-max-length, or another --out")
        cached_rule = manifest.teacher_options.get("byte_rule", "canonical")
        if cached_rule != options["byte_rule"]:
            raise ConfigError(f"byte_rule mismatch: {out} was captured with --byte-rule {cached_rule}, this capture "
                              f"asks for {options['byte_rule']}; use the same rule, or another --out")
        return manifest
    records = [TeacherRecord(spec=s, dir=teacher_dir(i, s)) for i, s in enumerate(specs)]
    manifest = Manifest(data=ident, teachers=records,
                        top_k=top_k, tail=tail, shard_chunks=shard_chunks, teacher_options=options)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest)
    return manifest


def _pending(out: Path, manifest: Manifest, index: int) -> list[tuple[int, int]]:
    """Shard ranges of teacher ``index`` still to capture; records of shards that fail their checksum are dropped."""
    record = manifest.teachers[index]
    todo = []
    for start, stop in manifest.shard_ranges():
        done = record.shard(start)
        if done is not None and file_matches(out / done.file, done.sha256):
            continue
        if done is not None:
            record.shards.remove(done)
        todo.append((start, stop))
    return todo


def _check_identity(record: TeacherRecord, teacher, weights: str, out: Path) -> None:
    """A resumed capture must run the same weights and tokenizer as the shards already written."""
    fingerprint = teacher.describe()["vocab_fingerprint"]
    if record.shards and (record.weights_sha256 != weights or
                          (record.describe or {}).get("vocab_fingerprint") != fingerprint):
        raise ConfigError(f"teacher {record.spec} changed since its first shards in {out} were captured (weights or "
                          f"tokenizer differ); capture into a new --out, or delete {out} to start over")


def _capture_shard(out: Path, manifest: Manifest, index: int, teacher, chunks: list[str], start: int, stop: int,
                   progress: Callable[[int], None]) -> ShardRecord:
    texts = chunks[start:stop]
    targets = teacher.byte_targets(texts, progress=progress)
    sizes = [len(t.encode("utf-8")) for t in texts]
    for i, (t, size) in enumerate(zip(targets, sizes)):
        if t.logprobs.shape[0] != size:
            raise ConfigError(f"teacher {teacher.name} returned {t.logprobs.shape[0]} rows for chunk {start + i} of "
                              f"{size} bytes")
    rows = encode_rows(torch.cat([t.logprobs for t in targets]), torch.cat([t.mask for t in targets]),
                       manifest.top_k, manifest.tail)
    record = manifest.teachers[index]
    meta = {"teacher": record.spec, "chunks": f"{start}:{stop}", "top_k": manifest.top_k, "tail": manifest.tail,
            "rule": f"{manifest.conversion['rule']}/{manifest.conversion['version']}"}
    blob = encode_shard(rows, sizes, meta)
    rel = manifest.shard_file(index, start)
    write_atomic(out / rel, blob)
    return ShardRecord(file=rel, start=start, stop=stop, rows=rows.num_rows, entries=rows.num_entries,
                       bytes=len(blob), sha256=sha256_bytes(blob))


def capture_cache(out: Path | str, teachers: Sequence[str], data: Path | str, *, top_k: int = 16,
                  tail: float = 1e-3, seq_bytes: int = 512, shard_chunks: int = 64, device: str = "cpu",
                  max_length: int | None = None, byte_rule: str = "canonical", show_progress: bool = True,
                  console=None, on_shard: ShardCallback | None = None, batch_size: int | None = None) -> Manifest:
    """Capture (or resume capturing) the byte cache of ``teachers`` over ``load_chunks(data, seq_bytes)``.

    Returns the final manifest. ``on_shard(teacher_index, start, stop)`` is called after each shard is on disk
    and recorded (tests use it to interrupt a capture). Raises ConfigError when ``out`` holds a cache of other
    data, teachers, rule or options. ``byte_rule`` (``canonical`` or ``exact:K=8``, see
    :mod:`mergekd.bytes.rule`) is every teacher's default; ``?byte_rule=`` in a spec wins.
    """
    from ..bytes.rule import parse_byte_rule

    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    check_options(top_k, tail)
    specs = list(teachers)
    if not specs:
        raise ConfigError("no teachers to capture: pass --teachers a,b")
    if shard_chunks < 1:
        raise ConfigError(f"shard_chunks={shard_chunks} must be at least 1")
    out = Path(out)
    ident, chunks = data_identity(data, seq_bytes)
    manifest = _open_manifest(out, specs, ident, top_k, tail, shard_chunks,
                              {"device": device, "max_length": max_length,
                               "byte_rule": parse_byte_rule(byte_rule, "byte_rule").label()})
    chunk_sizes = [len(c.encode("utf-8")) for c in chunks]

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not show_progress) as bar:
        tasks = [bar.add_task(f"t{i} {r.spec}", total=ident.num_bytes) for i, r in enumerate(manifest.teachers)]
        work = []  # (index, record, pending shard ranges) of the teachers with something left to capture
        for index, record in enumerate(manifest.teachers):
            todo = _pending(out, manifest, index)
            bar.update(tasks[index], completed=ident.num_bytes - sum(sum(chunk_sizes[s:e]) for s, e in todo))
            if todo:
                work.append((index, record, todo))
        overrides = {"device": device, "max_length": max_length, "batch_size": batch_size,
                     "byte_rule": manifest.teacher_options.get("byte_rule", "canonical")}
        # the generator first in zip: after the last teacher it is asked once more, which frees that teacher
        for teacher, (index, record, todo) in zip(one_at_a_time([r.spec for _, r, _ in work], overrides), work):
            weights = weights_sha256(teacher.model)
            _check_identity(record, teacher, weights, out)
            record.name, record.describe, record.weights_sha256 = teacher.name, teacher.describe(), weights
            bar.update(tasks[index], description=f"t{index} {teacher.name}")
            for start, stop in todo:
                shard = _capture_shard(out, manifest, index, teacher, chunks, start, stop,
                                       lambda n, task=tasks[index]: bar.advance(task, n))
                record.shards = sorted([s for s in record.shards if s.start != start] + [shard],
                                       key=lambda s: s.start)
                write_manifest(out, manifest)
                if on_shard is not None:
                    on_shard(index, start, stop)
    return manifest
