"""benchmarks/gpu_smoke.py cannot rot: its CPU dry run (tiny teacher and student on real tokenizers) runs every
step end to end and prints every RESULT line with finite numbers. No GPU needed, no mocks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EXPECTED = {
    "gpu_vs_cpu_max_abs", "kl_bits", "capture_over_forward", "capture_over_forward_min", "convert_over_logsoftmax",
    "convert_over_logsoftmax_min", "step_s_ce", "step_s_trie", "trie_over_ce", "peak_gpu_gib",
}


def result_fields(output: str) -> dict[str, str]:
    """key → value of every ``RESULT key=value ...`` line."""
    fields: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            fields.update(part.split("=", 1) for part in line.split()[1:])
    return fields


def test_gpu_smoke_dry_run_prints_finite_results(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "benchmarks/gpu_smoke.py", "--device", "cpu", "--tiny", "--steps", "2",
           "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fields = result_fields(proc.stdout)
    assert fields.get("gpu") == "none", proc.stdout
    missing = EXPECTED - set(fields)
    assert not missing, f"RESULT keys missing: {sorted(missing)}\n{proc.stdout}"
    for key in EXPECTED:
        assert math.isfinite(float(fields[key])), f"{key}={fields[key]}"
    # the CPU against itself must agree exactly; every timing must be positive
    assert float(fields["gpu_vs_cpu_max_abs"]) == 0 and float(fields["kl_bits"]) == 0
    for key in EXPECTED - {"gpu_vs_cpu_max_abs", "kl_bits", "peak_gpu_gib"}:
        assert float(fields[key]) > 0, f"{key}={fields[key]}"
    assert (tmp_path / "out" / "results.json").is_file()
    assert not (tmp_path / "out" / "ce").exists(), "run folders (GBs at full size) must be deleted"
