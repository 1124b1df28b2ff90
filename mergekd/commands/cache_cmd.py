"""``mergekd cache``: capture (or resume) a teacher byte cache, or ``--verify`` one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ..io import write_json
from .options import plain, refuse_unused, require, teacher_runtime_options, with_options


@with_options(
    teacher_runtime_options(flags={"teacher_device": ("--teacher-device", "--device"),
                                   "teacher_max_length": ("--teacher-max-length", "--max-length")}),
    [plain("data", None, "--data", help="training data, streamed: a .txt/.jsonl/.json/.parquet/.csv/.arrow file, a "
                                        "save_to_disk folder, a glob of shards (data/*.parquet) or hub:owner/name, "
                                        "with ?text_field=NAME etc.; the cache holds its chunks in stream order",
           annotation=Optional[str]),
     plain("limit_bytes", None, "--limit-bytes", help="capture only the first chunks up to this many text bytes "
                                                      "(the chunk that reaches it is included); default: all",
           annotation=Optional[int]),
     plain("limit_chunks", None, "--limit-chunks", help="capture only the first this many chunks (with "
                                                        "--limit-bytes too: whichever is reached first)",
           annotation=Optional[int]),
     plain("out", None, "--out", help="cache folder (manifest.json + one shard folder per teacher)",
           annotation=Optional[Path]),
     plain("top_k", 16, "--top-k", help="at most this many bytes stored per byte row (1..255)"),
     plain("tail", 1e-3, "--tail", help="a row stops storing bytes once the rest holds at most this mass"),
     plain("seq_bytes", 512, "--seq-bytes", help="chunk size in bytes: must equal the distill run's --seq-bytes"),
     plain("shard_chunks", 64, "--shard-chunks", help="chunks per shard file (the unit of resume and of loading)"),
     plain("verify", False, "--verify", help="check an existing cache: checksums, then recompute a sample of chunks "
                                             "and report KL(dense ‖ cached) per byte"),
     plain("json_out", None, "--json", help="write the summary / verify report here", annotation=Optional[Path]),
     plain("sample", 8, "--sample", help="--verify: chunks recomputed per teacher"),
     plain("quiet", False, "--quiet", help="no progress bar")])
def cache_command(**options) -> None:
    """Capture each teacher's next-byte distributions once (one teacher in memory at a time); rerun to resume.

    Example: mergekd cache --teachers smollm2-135m,gemma3-270m --data "corpus/*.parquet" --limit-bytes 50000000 \
                 --out runs/cache
    then:    mergekd distill --cache runs/cache --data "corpus/*.parquet" ...   (no teacher in memory)
    """
    from rich.console import Console
    from rich.table import Table

    from ..cache import capture_cache, verify_cache

    teachers, data, out = require(options, "teachers", "data", "out")
    device = options["teacher_device"] or "cpu"
    max_length, byte_rule = options["teacher_max_length"], options["byte_rule"] or "canonical"
    top_k, tail, seq_bytes, quiet = options["top_k"], options["tail"], options["seq_bytes"], options["quiet"]
    json_out = options["json_out"]
    console = Console()
    specs = [t.strip() for t in teachers.split(",") if t.strip()]
    if options["verify"]:
        refuse_unused(options, ("byte_rule", "teacher_batch_size", "limit_bytes", "limit_chunks"), "cache --verify",
                      "verification recomputes chunks with the rule, settings and limits recorded in the cache")
        report = verify_cache(out, specs, data, seq_bytes=seq_bytes, sample=options["sample"], device=device,
                              max_length=max_length, progress=None if quiet else console.print)
        table = Table("teacher", "rows", "mean KL (nats/byte)", "max KL", "mask mismatch", "bytes/text byte")
        for t in report["teachers"]:
            table.add_row(t["teacher"], str(t["rows"]), f"{t['mean_kl']:.5f}", f"{t['max_kl']:.4f}",
                          str(t["mask_mismatch"]), f"{t['bytes_per_text_byte']:.2f}")
        console.print(table)
        console.print(f"{report['shards']} shards, checksums ok; worst mean KL {report['mean_kl']:.5f} nats/byte; "
                      f"{report['bytes_per_text_byte']:.2f} bytes stored per text byte (all teachers)")
        payload = report
    else:
        manifest = capture_cache(out, specs, data, top_k=top_k, tail=tail, seq_bytes=seq_bytes,
                                 limit_bytes=options["limit_bytes"], limit_chunks=options["limit_chunks"],
                                 shard_chunks=options["shard_chunks"], device=device, max_length=max_length,
                                 byte_rule=byte_rule, batch_size=options["teacher_batch_size"],
                                 show_progress=not quiet, console=console)
        payload = manifest.summary()
        table = Table("teacher", "bytes stored", "bytes/text byte", "entries/row")
        for t in payload["teachers"]:
            table.add_row(t["teacher"], str(t["bytes"]), f"{t['bytes_per_text_byte']:.2f}",
                          f"{t['entries_per_row']:.2f}")
        console.print(table)
        console.print(f"cache {out}: {payload['chunks']} chunks, {payload['text_bytes']} text bytes, "
                      f"{payload['bytes_per_text_byte']:.2f} bytes stored per text byte (top-{top_k}, tail {tail:g})")
    if json_out is not None:
        write_json(json_out, payload)
