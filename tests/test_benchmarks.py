"""benchmarks/byte_conversion.py cannot rot: its smallest run (one vocab, a few positions, the random-weight
SmolLM2-135M twin instead of the real teacher) prints the final RESULT line with finite, positive ratios."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_byte_conversion_smallest_run_prints_result():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "benchmarks/byte_conversion.py", "--quick", "--no-teacher", "--vocabs", "smollm2",
           "--positions", "32", "--repeats", "1", "--naive-rows", "1", "--texts", "1", "--text-bytes", "120"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), proc.stdout
    fields = dict(part.split("=", 1) for part in last.split()[1:])
    assert set(fields) == {"convert_over_logsoftmax", "convert_over_logsoftmax_min", "capture_over_forward",
                           "capture_over_forward_min"}
    for key, value in fields.items():
        assert math.isfinite(float(value)) and float(value) > 0, f"{key}={value}"
