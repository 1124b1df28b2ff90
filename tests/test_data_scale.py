"""benchmarks/data_scale.py cannot rot: a dry run on a tiny corpus (2 MB of text in 0.5 MB shards, a 4 KB cache)
prints a well-formed RESULT line with positive numbers, reuses its corpus, and cleans its work folder. Timing
targets are not checked here (the numbers of a 2 MB corpus say nothing about throughput)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_data_scale_tiny_run_prints_result(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    corpus, work = tmp_path / "corpus", tmp_path / "work"
    cmd = [sys.executable, "benchmarks/data_scale.py", "--corpus-mb", "2", "--shard-mb", "0.5", "--jsonl-mb", "1",
           "--cache-mb", "0.004", "--parts", "stream,cache", "--corpus", str(corpus), "--work", str(work)]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), proc.stdout
    fields = dict(part.split("=", 1) for part in last.split()[1:])
    assert list(fields) == ["stream_mb_per_s", "stream_peak_rss_mb", "cache_peak_rss_mb"]
    for key, value in fields.items():
        assert math.isfinite(float(value)) and float(value) > 0, f"{key}={value}"
    assert "| part | data |" in proc.stdout

    marker = json.loads((corpus / "corpus.json").read_text())
    assert 2_000_000 <= marker["text_bytes"] < 2_030_000  # stops at the first document past the size
    assert len(list((corpus / "parquet").glob("*.parquet"))) == 4
    assert 1_000_000 <= marker["jsonl_text_bytes"] < 1_030_000
    assert not (work / "cache-full").exists() and not (work / "cache-small").exists()  # cleaned without --keep
    assert "corpus: writing" in proc.stderr
