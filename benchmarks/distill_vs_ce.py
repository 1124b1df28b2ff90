"""Does distillation help? The same fresh student, data, steps and seed trained twice — distilled from the real
teachers through the byte head, and CE-only — then held-out bits per byte of both exports (and of the teachers).

Data: the first ``--train-bytes`` of Botchan (public domain) for training, its last ``--heldout-bytes`` for
evaluation (disjoint). With ``--cache DIR`` the distilled run reads teacher targets from a byte cache built by
``mergekd cache`` over the same training file (much faster on CPU); otherwise teachers run online.

Last line: ``RESULT distilled_bpb=<x> ce_only_bpb=<y> gain=<y-x>``.
Run: python benchmarks/distill_vs_ce.py --out runs/distill_vs_ce [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/distill_vs_ce"))
    ap.add_argument("--teachers", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--student", default="new:llama?tokenizer=mistral-v3&layers=4&hidden=256&heads=4&ctx=512")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-bytes", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--byte-ce-weight", type=float, default=1.0)
    ap.add_argument("--mix", default="linear")
    ap.add_argument("--train-bytes", type=int, default=80_000)
    ap.add_argument("--heldout-bytes", type=int, default=20_000)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--skip-teacher-eval", action="store_true")
    args = ap.parse_args()

    from mergekd.assets import read_text
    from mergekd.distill import distill, load_config
    from mergekd.evaluate import evaluate_file

    args.out.mkdir(parents=True, exist_ok=True)
    text = read_text("botchan").encode("utf-8")
    train, heldout = args.out / "train.txt", args.out / "heldout.txt"
    cut = text[: args.train_bytes]
    train.write_bytes(cut[: len(cut.decode("utf-8", "ignore").encode())])
    tail = text[-args.heldout_bytes:].decode("utf-8", "ignore")
    heldout.write_text(tail)
    common = dict(student=args.student, data=str(train), steps=args.steps, batch_size=args.batch_size,
                  seq_bytes=args.seq_bytes, lr=args.lr, save_every=max(10, args.steps // 4), seed=0,
                  eval_data=str(heldout), warmup_steps=10)
    results = {}
    runs = {
        "distilled": dict(common, teachers=args.teachers, out=str(args.out / "distilled"), mix=args.mix,
                          kl_weight=args.kl_weight, byte_ce_weight=args.byte_ce_weight,
                          cache=str(args.cache) if args.cache else None),
        "ce_only": dict(common, teachers=[], out=str(args.out / "ce_only"), byte_ce_weight=0.0, kl_weight=0.0),
    }
    for name, overrides in runs.items():
        final = distill(load_config(None, overrides), show_progress=True)
        results[name] = json.loads((final / "eval.json").read_text())["bpb"]
        print(f"{name}: held-out {results[name]:.4f} bits/byte")
    if not args.skip_teacher_eval:
        from mergekd.teachers import load_teacher

        for spec in args.teachers.split(","):
            with load_teacher(spec) as teacher:
                results[f"teacher:{spec}"] = evaluate_file(teacher.model, teacher.tokenizer, heldout)["bpb"]
            print(f"teacher {spec}: held-out {results[f'teacher:{spec}']:.4f} bits/byte")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "bpb": results}, indent=1))
    gain = results["ce_only"] - results["distilled"]
    print(f"RESULT distilled_bpb={results['distilled']:.4f} ce_only_bpb={results['ce_only']:.4f} gain={gain:.4f}")


if __name__ == "__main__":
    main()
