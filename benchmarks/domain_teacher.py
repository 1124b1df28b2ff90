"""Benchmark: a pretrained student and a teacher that knows the domain better than it does.

The pretrained-student ablation (``configs/ablations/pretrained-student.yaml``) distilled the stock Gemma-3-270m
into the pretrained SmolLM2-135M on *Hamlet*: the teacher was barely better than the student on that text and
far worse than CE fine-tuning made it, and distillation lost to CE fine-tuning. That is not the case users
distil in: they have a teacher that is better than the student on their data. This script builds one, then
asks the same question:

1. **Domain teacher.** ``mergekd distill --student teacher:gemma3-270m`` without teachers (CE fine-tuning) on
   Shakespeare: *The Tempest*, *King Lear* and the first 48 KB of *Hamlet*'s body (the student's own training
   text), never the held-out end of *Hamlet*. ``--teacher-steps`` steps × 8 × 512 bytes, lr 5e-5, the export
   scored on the held-out text (its model card). A rerun resumes or reuses the finished teacher.
2. **Ablation.** ``mergekd ablate configs/ablations/domain-teacher.yaml``: the pretrained SmolLM2-135M student,
   30 steps of *Hamlet* per cell, distilled from the step-1 teacher (token-trie term × 3, the default recipe)
   against CE fine-tuning, 3 seeds, paired differences; the teachers scored on the held-out text.

Output: the ablation's table (``OUT/ablate/results.md``) and a last line
``RESULT teacher_bpb=… ce_bpb=… distilled_bpb=… delta=… delta_lo=… delta_hi=…`` (held-out bits per byte, the
paired difference distilled − CE with its 95% interval; negative = distillation wins).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/domain_teacher.py --out runs/domain-teacher
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ablations" / "domain-teacher.yaml"
DEFAULT_OUT = Path("runs/domain-teacher")
TEACHER_TEXTS = ("asset:tempest", "asset:lear", "asset:hamlet[0:48000]")
HELDOUT = "asset:hamlet[-16000:]"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default runs/domain-teacher)")
    ap.add_argument("--teacher-steps", type=int, default=60,
                    help="CE fine-tuning steps of the teacher (batch 8 × 512 bytes; default 60 ≈ 0.8 epoch)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds for the ablation (default: the config's)")
    return ap.parse_args(argv)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit status {proc.returncode}: {' '.join(cmd)}")


def write_texts(out: Path) -> tuple[Path, Path]:
    """The teacher's training text (the three slices joined by blank lines) and the held-out text, as files."""
    from mergekd.ablate.data import slice_bytes
    from mergekd.io import write_if_changed

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    train = data / "teacher-train.txt"
    write_if_changed(train, b"\n\n".join(slice_bytes(spec).strip() for spec in TEACHER_TEXTS) + b"\n")
    heldout = data / "hamlet-heldout.txt"
    write_if_changed(heldout, slice_bytes(HELDOUT))
    return train, heldout


def ablation_config(out: Path, teacher: Path, seeds: str | None) -> Path:
    """configs/ablations/domain-teacher.yaml with the teacher folder (and seeds) of this run."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    default = "hf:" + str(DEFAULT_OUT / "teacher" / "final")
    cfg["grid"]["teachers"] = [f"hf:{teacher}" if t == default else t for t in cfg["grid"]["teachers"]]
    if seeds:
        cfg["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
    from mergekd.io import write_if_changed

    path = out / "ablation.yaml"
    write_if_changed(path, "# written by benchmarks/domain_teacher.py from " + str(CONFIG.relative_to(ROOT))
                     + "\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, heldout = write_texts(out)
    print(f"teacher text {train.stat().st_size:,} bytes; held-out {heldout.stat().st_size:,} bytes", file=sys.stderr)
    teacher_out = out / "teacher"
    run([sys.executable, "-m", "mergekd", "distill", "--student", "teacher:gemma3-270m", "--data", str(train),
         "--eval-data", str(heldout), "--steps", str(args.teacher_steps), "--batch-size", "8", "--seq-bytes", "512",
         "--lr", "5e-5", "--warmup-steps", "3", "--save-every", "20", "--device", "cpu", "--seed", "0",
         "--out", str(teacher_out)])
    t_teacher = time.perf_counter() - t0
    teacher = teacher_out / "final"  # the export of the fine-tuning run: the ablation's teacher
    config = ablation_config(out, teacher, args.seeds)
    run([sys.executable, "-m", "mergekd", "ablate", str(config), "--out", str(out / "ablate")])
    report = json.loads((out / "ablate" / "results.json").read_text())
    cells = {c["cell"]: c for c in report["table"]}
    ce = cells["ce-only"]
    dist = next(c for name, c in cells.items() if name != "ce-only")
    teacher_bpb = next((t["bpb"] for t in report.get("teachers", []) if t.get("spec") == f"hf:{teacher}"), None)
    print((out / "ablate" / "results.md").read_text())
    print(f"teacher fine-tuning {t_teacher:.0f} s; total {time.perf_counter() - t0:.0f} s")

    def f(x):
        return "nan" if x is None else f"{x:.4f}"

    print(f"RESULT teacher_bpb={f(teacher_bpb)} ce_bpb={f(ce['bpb'])} distilled_bpb={f(dist['bpb'])} "
          f"delta={f(dist.get('delta_vs_ce'))} delta_lo={f(dist.get('delta_ci95_lo'))} "
          f"delta_hi={f(dist.get('delta_ci95_hi'))}")


if __name__ == "__main__":
    main()
