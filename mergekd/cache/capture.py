"""Capture: run each teacher once over the training chunks, streamed, and write its sparse byte rows shard by shard.

Why one teacher at a time: memory then holds one teacher (Gemma-3-270m alone is 3.3 GB on CPU), which is the
point of a cache. Why streamed: a corpus may be far larger than memory; each teacher reads the data as a stream
(:func:`mergekd.sources.iter_indexed_chunks`, stream order), cut at ``limit_bytes``/``limit_chunks``, and memory
holds one shard of chunk texts and their targets, never the corpus. Why shards recorded one by one: a capture of a
large corpus takes hours; killed at any moment, it resumes at the data position: the stream is read again from
the start (a stream cannot seek), every shard already listed in the manifest and on disk with its sha256 is
skipped without running the teacher — after checking that its chunk texts still hash as recorded, so edited data
is refused instead of mixed in — and the teacher runs from the first unfinished shard on. A teacher is loaded
only when it reaches a shard it must compute: once the first pass has ended (and the chunk count is known), a
teacher whose shards are all finished is not loaded and its data not read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..io import write_atomic
from ..teachers.adapter import one_at_a_time
from .codec import check_options, encode_rows
from .identity import (ChunkHasher, DataIdentity, cache_source, chunks_sha256, covered_chunks, data_identity,
                       file_fingerprint, sha256_bytes, weights_sha256)
from .manifest import (
    MANIFEST,
    Manifest,
    ShardRecord,
    TeacherRecord,
    check_capture_options,
    check_chunks,
    check_limits_match,
    check_rule,
    check_source,
    check_teachers,
    read_manifest,
    teacher_dir,
    write_manifest,
)
from .shard import encode_shard, file_matches

ShardCallback = Callable[[int, int, int], None]  # (teacher index, first chunk, stop chunk)


def _open_manifest(out: Path, specs: list[str], source, ident: DataIdentity, top_k: int, tail: float,
                   shard_chunks: int, options: dict) -> Manifest:
    """The manifest to continue (checked against this capture) or a fresh one."""
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        check_rule(manifest, out)
        check_teachers(manifest, specs, out)
        check_source(manifest, source, ident.seq_bytes, out)
        check_limits_match(manifest, ident.limit_bytes, ident.limit_chunks, out)
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


def _finished(out: Path, manifest: Manifest, index: int) -> dict[int, ShardRecord]:
    """Teacher ``index``'s finished shards by start; records of shards that fail their checksum are dropped."""
    record = manifest.teachers[index]
    good = {}
    for shard in list(record.shards):
        if file_matches(out / shard.file, shard.sha256):
            good[shard.start] = shard
        else:
            record.shards.remove(shard)
    return good


def _pending(manifest: Manifest, finished: dict[int, ShardRecord]) -> list[tuple[int, int]] | None:
    """Shard ranges still to capture, or None while the first pass is unfinished (the ranges are not known)."""
    if not manifest.data.complete:
        return None
    return [(s, e) for s, e in manifest.shard_ranges() if s not in finished]


def _check_identity(record: TeacherRecord, teacher, weights: str, out: Path) -> None:
    """A resumed capture must run the same weights and tokenizer as the shards already written."""
    fingerprint = teacher.describe()["vocab_fingerprint"]
    if record.shards and (record.weights_sha256 != weights or
                          (record.describe or {}).get("vocab_fingerprint") != fingerprint):
        raise ConfigError(f"teacher {record.spec} changed since its first shards in {out} were captured (weights or "
                          f"tokenizer differ); capture into a new --out, or delete {out} to start over")


def _shards(stream: Iterator[tuple[int, str]], size: int) -> Iterator[tuple[int, list[str]]]:
    """``(first chunk index, texts)`` of consecutive groups of ``size`` chunks (the last may be shorter)."""
    batch: list[str] = []
    start = 0
    for n, chunk in stream:
        if not batch:
            start = n
        batch.append(chunk)
        if len(batch) == size:
            yield start, batch
            batch = []
    if batch:
        yield start, batch


def _capture_shard(out: Path, manifest: Manifest, index: int, teacher, texts: list[str], start: int,
                   text_hash: str, progress: Callable[[int], None]) -> ShardRecord:
    stop = start + len(texts)
    targets = teacher.byte_targets(texts, progress=progress)
    sizes = [len(t.encode("utf-8")) for t in texts]
    for i, (t, size) in enumerate(zip(targets, sizes)):
        if t.logprobs.shape[0] != size:
            raise ConfigError(f"teacher {teacher.name} returned {t.logprobs.shape[0]} rows for chunk {start + i} of "
                              f"{size} bytes")
    rows = encode_rows(torch.cat([t.logprobs for t in targets]), torch.cat([t.mask for t in targets]),
                       manifest.top_k, manifest.tail)
    del targets
    record = manifest.teachers[index]
    meta = {"teacher": record.spec, "chunks": f"{start}:{stop}", "top_k": manifest.top_k, "tail": manifest.tail,
            "rule": f"{manifest.conversion['rule']}/{manifest.conversion['version']}"}
    blob = encode_shard(rows, sizes, meta)
    rel = manifest.shard_file(index, start)
    write_atomic(out / rel, blob)
    return ShardRecord(file=rel, start=start, stop=stop, rows=rows.num_rows, entries=rows.num_entries,
                       bytes=len(blob), sha256=sha256_bytes(blob), text_sha256=text_hash)


def _changed(out: Path, manifest: Manifest, source, start: int, stop: int) -> ConfigError:
    return ConfigError(f"data changed: chunks [{start}, {stop}) of {source.to_spec()} differ from the chunks cache "
                       f"{out} captured there from {manifest.data.source} (chunk texts are hashed per shard); "
                       f"restore the data, or capture into a new --out (or delete {out} to start over)")


def capture_cache(out: Path | str, teachers: Sequence[str], data, *, top_k: int = 16, tail: float = 1e-3,
                  seq_bytes: int = 512, limit_bytes: int | None = None, limit_chunks: int | None = None,
                  shard_chunks: int = 64, device: str = "cpu", max_length: int | None = None,
                  byte_rule: str = "canonical", show_progress: bool = True, console=None,
                  on_shard: ShardCallback | None = None, batch_size: int | None = None) -> Manifest:
    """Capture (or resume capturing) the byte cache of ``teachers`` over the chunks of ``data``.

    ``data`` is a :class:`~mergekd.sources.DataSource`, a spec string (``data/*.parquet?text_field=body``) or a
    Path; it is streamed in stream order (its ``shuffle_buffer`` is ignored). The cache covers chunks
    ``[0, num_chunks)`` of that stream: all of them, or the first ``limit_chunks``, or those up to
    ``limit_bytes`` text bytes (the chunk that reaches the limit is included); with both limits, whichever is
    reached first. ``num_chunks`` is recorded when the first teacher's pass ends.

    Returns the final manifest. ``on_shard(teacher_index, start, stop)`` is called after each shard is on disk
    and recorded (tests use it to interrupt a capture). Raises ConfigError when ``out`` holds a cache of other
    data (chunk texts differ from the finished shards'), teachers, limits, rule or options. ``byte_rule``
    (``canonical`` or ``exact:K=8``, see :mod:`mergekd.bytes.rule`) is every teacher's default; ``?byte_rule=``
    in a spec wins.
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
    source = cache_source(data)
    ident = data_identity(source, seq_bytes, limit_bytes=limit_bytes, limit_chunks=limit_chunks)
    if not (out / MANIFEST).is_file():
        next(covered_chunks(source, seq_bytes))  # missing data, a bad field or no text fail before a folder is made
    manifest = _open_manifest(out, specs, source, ident, top_k, tail, shard_chunks,
                              {"device": device, "max_length": max_length,
                               "byte_rule": parse_byte_rule(byte_rule, "byte_rule").label()})
    overrides = {"device": device, "max_length": max_length, "batch_size": batch_size,
                 "byte_rule": manifest.teacher_options.get("byte_rule", "canonical")}

    def total() -> int | None:
        return manifest.data.num_bytes if manifest.data.complete else limit_bytes

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn()]
    ran = False
    with Progress(*columns, console=console, disable=not show_progress) as bar:
        tasks = [bar.add_task(f"t{i} {r.spec}", total=total()) for i, r in enumerate(manifest.teachers)]
        for index in range(len(manifest.teachers)):
            finished = _finished(out, manifest, index)
            todo = _pending(manifest, finished)
            if todo == []:
                bar.update(tasks[index], completed=manifest.text_bytes())
                continue
            ran = True
            _capture_teacher(out, manifest, index, source, finished, todo, overrides, bar, tasks[index], on_shard)
            for task in tasks:
                bar.update(task, total=total())
    if not ran:
        # nothing to capture: still check that the data is the cached data (skipped when the files are unchanged)
        check_chunks(manifest, source, out, trust_files=True)
        fingerprint = file_fingerprint(source)
        if fingerprint != manifest.data.files:
            manifest.data = replace(manifest.data, files=fingerprint)
            write_manifest(out, manifest)
    return manifest


def _capture_teacher(out: Path, manifest: Manifest, index: int, source, finished: dict[int, ShardRecord],
                     todo: list[tuple[int, int]] | None, overrides: dict, bar, task, on_shard) -> None:
    """One teacher's pass: stream the data (to the last pending shard once the chunk count is known), skip the
    finished shards after checking their text hashes, load the teacher at its first pending shard, capture."""
    ident = manifest.data
    record = manifest.teachers[index]
    first_pass = todo is None
    if first_pass:
        stream = covered_chunks(source, ident.seq_bytes, limit_bytes=ident.limit_bytes,
                                limit_chunks=ident.limit_chunks)
        end = None
    else:
        end = max(stop for _, stop in todo)
        stream = covered_chunks(source, ident.seq_bytes, stop=end)
        bar.update(task, completed=sum(s.rows for s in finished.values() if s.start >= end))
    expected = manifest.text_hashes()
    hasher = ChunkHasher()
    loader = teacher = None
    try:
        for start, texts in _shards(stream, manifest.shard_chunks):
            stop = start + len(texts)
            for chunk in texts:
                hasher.update(chunk)
            text_hash = chunks_sha256(texts)
            if expected.get(start, text_hash) != text_hash:
                raise _changed(out, manifest, source, start, stop)
            done = finished.get(start)
            if done is not None and done.stop == stop:
                bar.advance(task, done.rows)
                continue
            if teacher is None:
                loader = one_at_a_time([record.spec], overrides)
                teacher = next(loader)
                weights = weights_sha256(teacher.model)
                _check_identity(record, teacher, weights, out)
                record.name, record.describe, record.weights_sha256 = teacher.name, teacher.describe(), weights
                bar.update(task, description=f"t{index} {teacher.name}")
            shard = _capture_shard(out, manifest, index, teacher, texts, start, text_hash,
                                   lambda n: bar.advance(task, n))
            record.shards = sorted([s for s in record.shards if s.start != start] + [shard], key=lambda s: s.start)
            finished[start] = shard
            write_manifest(out, manifest)
            if on_shard is not None:
                on_shard(index, start, stop)
    finally:
        teacher = None
        if loader is not None:
            loader.close()  # frees the teacher before the next one loads
    if not first_pass:
        if hasher.count < end:
            raise ConfigError(f"data changed: {source.to_spec()} now ends after {hasher.count} chunks, but cache "
                              f"{out} covers {ident.covers()}; restore the data, or capture into a new --out")
        return
    beyond = [s.file for t in manifest.teachers for s in t.shards if s.start >= hasher.count]
    if beyond:
        raise ConfigError(f"data changed: {source.to_spec()} now ends after {hasher.count} chunks, but cache {out} "
                          f"already holds shards after that ({beyond[0]}); restore the data, or capture into a new "
                          "--out")
    manifest.data = replace(ident, complete=True, num_chunks=hasher.count, num_bytes=hasher.bytes,
                            chunks_sha256=hasher.hexdigest(), files=file_fingerprint(source))
    write_manifest(out, manifest)
