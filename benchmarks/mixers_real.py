"""Do learned mixtures of the real teachers beat the better teacher alone on held-out text?

Writes two disjoint slices of *Botchan*'s body (public domain, from the offline text cache, without the
Gutenberg header and licence): ``fit.txt`` (its first ``--fit-bytes``) and ``heldout.txt`` (its last
``--heldout-bytes``), then runs ``mergekd score --json`` once per
mixer — the learned mixers are fit on ``fit.txt`` only — and prints one table of held-out bits per byte.

Last line: ``RESULT best_teacher=<x> learned=<y> gated=<z>`` (bits per byte; lower is better).
Run: python benchmarks/mixers_real.py --out runs/mixers_real
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_slices(out: Path, fit_bytes: int, heldout_bytes: int) -> tuple[Path, Path]:
    """Disjoint fit / held-out slices of Botchan's body, cut on character boundaries."""
    from mergekd.assets import read_body, text_slice

    size = len(read_body("botchan").encode("utf-8"))
    if fit_bytes + heldout_bytes > size:
        sys.exit(f"--fit-bytes + --heldout-bytes = {fit_bytes + heldout_bytes} exceeds Botchan ({size} bytes)")
    fit, heldout = out / "fit.txt", out / "heldout.txt"
    fit.write_text(text_slice("botchan", 0, fit_bytes), encoding="utf-8")
    heldout.write_text(text_slice("botchan", -heldout_bytes), encoding="utf-8")
    return fit, heldout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/mixers_real"))
    ap.add_argument("--teachers", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--mixers", default="learned,gated", help="mixer specs separated by '|' or ','")
    ap.add_argument("--fit-bytes", type=int, default=16_000)
    ap.add_argument("--heldout-bytes", type=int, default=16_000)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fit, heldout = write_slices(args.out, args.fit_bytes, args.heldout_bytes)
    mixers = [m for m in args.mixers.replace("|", ",").split(",") if m]

    results: dict[str, dict] = {}
    for mix in mixers:
        json_out = args.out / f"score-{mix.replace(':', '_')}.json"
        if not json_out.exists():  # rerunning skips mixers already scored
            cmd = [sys.executable, "-m", "mergekd", "score", "--teachers", args.teachers, "--data", str(heldout),
                   "--fit-data", str(fit), "--mix", mix, "--json", str(json_out)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        results[mix] = json.loads(json_out.read_text())

    first = next(iter(results.values()))
    teachers = {name: t["bpb"] for name, t in first["teachers"].items()}
    print(f"\nheld-out: {heldout} ({first['bytes']:,} bytes); fit: {fit}")
    print(f"{'scored':<28}{'BPB':>8}")
    for name, bpb in teachers.items():
        print(f"{'teacher ' + name:<28}{bpb:>8.4f}")
    for mix, rep in results.items():
        weights = rep["mixture"].get("weights")
        print(f"{'mixture ' + mix:<28}{rep['mixture']['bpb']:>8.4f}  weights={weights}")
    best = min(teachers.values())
    parts = " ".join(f"{m.split(':')[0]}={r['mixture']['bpb']:.4f}" for m, r in results.items())
    print(f"RESULT best_teacher={best:.4f} {parts}")


if __name__ == "__main__":
    main()
