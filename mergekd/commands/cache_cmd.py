"""``mergekd cache``: capture (or resume) a teacher byte cache, or ``--verify`` one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..io import write_json


def cache_command(
    teachers: str = typer.Option(..., help="comma-separated teacher specs, in run order, e.g. "
                                           "smollm2-135m,gemma3-270m"),
    data: Path = typer.Option(..., help="training text (.txt or .jsonl); the cache holds its chunks, in order"),
    out: Path = typer.Option(..., help="cache folder (manifest.json + one shard folder per teacher)"),
    top_k: int = typer.Option(16, help="at most this many bytes stored per byte row (1..255)"),
    tail: float = typer.Option(1e-3, help="a row stops storing bytes once the rest holds at most this mass"),
    seq_bytes: int = typer.Option(512, help="chunk size in bytes: must equal the distill run's --seq-bytes"),
    shard_chunks: int = typer.Option(64, help="chunks per shard file (the unit of resume and of loading)"),
    verify: bool = typer.Option(False, "--verify", help="check an existing cache: checksums, then recompute a sample "
                                                       "of chunks and report KL(dense ‖ cached) per byte"),
    device: str = typer.Option("cpu", help="device the teachers run on (cpu, cuda, mps)"),
    max_length: Optional[int] = typer.Option(None, "--teacher-max-length", "--max-length", min=16,
                                             help="teacher window in tokens (default: the teacher's own, "
                                                  "min(model positions, 1024): the same default as score, distill, "
                                                  "fidelity and ablate)"),
    byte_rule: str = typer.Option("canonical", help="token → byte rule: canonical (fast) or exact:K=8 (covering "
                                                    "sum over tokenizations, ~0.1-0.3 s per byte: short texts)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the summary / verify report here"),
    sample: int = typer.Option(8, help="--verify: chunks recomputed per teacher"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Capture each teacher's next-byte distributions once (one teacher in memory at a time); rerun to resume.

    Example: mergekd cache --teachers smollm2-135m,gemma3-270m --data train.txt --out runs/cache
    then:    mergekd distill --cache runs/cache --data train.txt ...   (no teacher in memory)
    """
    from rich.console import Console
    from rich.table import Table

    from ..cache import capture_cache, verify_cache

    console = Console()
    specs = [t.strip() for t in teachers.split(",") if t.strip()]
    if verify:
        report = verify_cache(out, specs, data, seq_bytes=seq_bytes, sample=sample, device=device,
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
                                 shard_chunks=shard_chunks, device=device, max_length=max_length,
                                 byte_rule=byte_rule,
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
