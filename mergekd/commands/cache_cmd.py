"""``mergekd cache``: capture (or resume) a teacher byte cache, or ``--verify`` one."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..io import write_json
from .options import model_options, refuse_unused, require, teacher_runtime_options, validated, with_options


class CacheOptions(BaseModel):
    """``mergekd cache``'s own options (the teacher-runtime group is shared).

    ``top_k``, ``tail``, ``shard_chunks`` and the limits carry no bounds here: the cache's own checks refuse them
    with messages that name the cache's meaning (``top_k=0 must be in 1..255 (entries per byte row)``)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="training data, streamed: a .txt/.jsonl/.json/.parquet/.csv/.arrow file, a "
                                  "save_to_disk folder, a glob of shards (data/*.parquet) or hub:owner/name, with "
                                  "?text_field=NAME etc.; the cache holds its chunks in stream order")
    limit_bytes: int | None = Field(None, description="capture only the first chunks up to this many text bytes "
                                                      "(the chunk that reaches it is included); default: all")
    limit_chunks: int | None = Field(None, description="capture only the first this many chunks (with "
                                                       "--limit-bytes too: whichever is reached first)")
    out: Path = Field(description="cache folder (manifest.json + one shard folder per teacher)")
    top_k: int = Field(16, description="at most this many bytes stored per byte row (1..255)")
    tail: float = Field(1e-3, description="a row stops storing bytes once the rest holds at most this mass")
    seq_bytes: int = Field(512, description="chunk size in bytes: must equal the distill run's --seq-bytes")
    shard_chunks: int = Field(64, description="chunks per shard file (the unit of resume and of loading)")
    verify: bool = Field(False, description="check an existing cache: checksums, then recompute a sample of chunks "
                                            "and report KL(dense ‖ cached) per byte")
    json_out: Path | None = Field(None, description="write the summary / verify report here")
    sample: int = Field(8, description="--verify: chunks recomputed per teacher")
    quiet: bool = Field(False, description="no progress bar")


_RUNTIME_FLAGS = {"teacher_device": ("--teacher-device", "--device"),
                  "teacher_max_length": ("--teacher-max-length", "--max-length")}


@with_options(teacher_runtime_options(flags=_RUNTIME_FLAGS),
              model_options(CacheOptions, flags={"json_out": ("--json",)}))
def cache_command(**options) -> None:
    """Capture each teacher's next-byte distributions once (one teacher in memory at a time); rerun to resume.

    Example: mergekd cache --teachers smollm2-135m,gemma3-270m --data "corpus/*.parquet" --limit-bytes 50000000 \
                 --out runs/cache
    then:    mergekd distill --cache runs/cache --data "corpus/*.parquet" ...   (no teacher in memory)
    """
    from rich.console import Console

    (teachers,) = require(options, "teachers")
    opts = validated(CacheOptions, options, "cache")
    specs = [t.strip() for t in teachers.split(",") if t.strip()]
    if opts.verify:
        refuse_unused(options, ("byte_rule", "teacher_batch_size", "limit_bytes", "limit_chunks"), "cache --verify",
                      "verification recomputes chunks with the rule, settings and limits recorded in the cache")
        payload = _verify(opts, specs, options, Console())
    else:
        payload = _capture(opts, specs, options, Console())
    if opts.json_out is not None:
        write_json(opts.json_out, payload)


def _verify(opts: CacheOptions, specs: list[str], runtime: dict, console) -> dict:
    """``--verify``: recompute a sample of chunks and print the per-teacher KL table; returns the report."""
    from rich.table import Table

    from ..cache import verify_cache

    report = verify_cache(opts.out, specs, opts.data, seq_bytes=opts.seq_bytes, sample=opts.sample,
                          device=runtime["teacher_device"] or "cpu", max_length=runtime["teacher_max_length"],
                          progress=None if opts.quiet else console.print)
    table = Table("teacher", "rows", "mean KL (nats/byte)", "max KL", "mask mismatch", "bytes/text byte")
    for t in report["teachers"]:
        table.add_row(t["teacher"], str(t["rows"]), f"{t['mean_kl']:.5f}", f"{t['max_kl']:.4f}",
                      str(t["mask_mismatch"]), f"{t['bytes_per_text_byte']:.2f}")
    console.print(table)
    console.print(f"{report['shards']} shards, checksums ok; worst mean KL {report['mean_kl']:.5f} nats/byte; "
                  f"{report['bytes_per_text_byte']:.2f} bytes stored per text byte (all teachers)")
    return report


def _capture(opts: CacheOptions, specs: list[str], runtime: dict, console) -> dict:
    """Capture (or resume) the cache and print what each teacher stored; returns the manifest's summary."""
    from rich.table import Table

    from ..cache import capture_cache

    manifest = capture_cache(opts.out, specs, opts.data, top_k=opts.top_k, tail=opts.tail, seq_bytes=opts.seq_bytes,
                             limit_bytes=opts.limit_bytes, limit_chunks=opts.limit_chunks,
                             shard_chunks=opts.shard_chunks, device=runtime["teacher_device"] or "cpu",
                             max_length=runtime["teacher_max_length"], byte_rule=runtime["byte_rule"] or "canonical",
                             batch_size=runtime["teacher_batch_size"], show_progress=not opts.quiet, console=console)
    payload = manifest.summary()
    table = Table("teacher", "bytes stored", "bytes/text byte", "entries/row")
    for t in payload["teachers"]:
        table.add_row(t["teacher"], str(t["bytes"]), f"{t['bytes_per_text_byte']:.2f}", f"{t['entries_per_row']:.2f}")
    console.print(table)
    console.print(f"cache {opts.out}: {payload['chunks']} chunks, {payload['text_bytes']} text bytes, "
                  f"{payload['bytes_per_text_byte']:.2f} bytes stored per text byte (top-{opts.top_k}, tail "
                  f"{opts.tail:g})")
    return payload
