"""Benchmark: one optimizer step with the byte head (token CE + byte CE + KL to teacher rows), and one with the
token-trie term (token CE + KL to the byte rows of the student's own token softmax), vs a CE-only step.

Same student (a fresh Llama with the Mistral-v3 tokenizer), same batch of real text (botchan), same optimizer;
the teacher mixture rows are precomputed (teacher cost is measured by benchmarks/cache.py), so the ratio is the
price of the byte head itself. Steps alternate between the two variants to share any machine noise.

Prints ``RESULT trie/ce_only=<y>``, then (last line) ``RESULT bytehead/ce_only=<x>``.
Run: python benchmarks/distill_step.py [--steps 6] [--batch 8] [--seq-bytes 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mergekd.assets import read_text  # noqa: E402
from mergekd.bytes import byte_vocab_for  # noqa: E402
from mergekd.bytes.targets import model_vocab_width  # noqa: E402
from mergekd.data import chunk_text  # noqa: E402
from mergekd.distill.batch import build_student_batch  # noqa: E402
from mergekd.distill.objective import LossWeights, StudentWithHead  # noqa: E402
from mergekd.student import build_byte_head, load_student  # noqa: E402
from mergekd.student.byte_rows import StudentByteRows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-bytes", type=int, default=512)
    ap.add_argument("--student", default="new:llama?tokenizer=mistral-v3&layers=4&hidden=256&heads=4&ctx=512")
    ap.add_argument("--head", default="parallel")
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = chunk_text(read_text("botchan"), args.seq_bytes)[10:10 + args.batch]
    runs = {}
    for name in ("ce_only", "bytehead", "trie"):
        with_head, trie = name == "bytehead", name == "trie"
        student, tok = load_student(args.student)
        head = build_byte_head(args.head, student.config.hidden_size, 10) if with_head else None
        rows_of_vocab = StudentByteRows.for_vocab(byte_vocab_for(tok), model_vocab_width(student)) if trie else None
        model = StudentWithHead(student, head, rows_of_vocab).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch, offsets = build_student_batch(byte_vocab_for(tok), texts, 10, 512)
        g = torch.Generator().manual_seed(0)
        rows = int(offsets[-1])
        teacher = torch.log_softmax(torch.randn(rows, 257, generator=g) * 3, -1)
        teacher[:, 256] = float("-inf")
        teacher = teacher - teacher.logsumexp(-1, keepdim=True)
        weights = LossWeights(1.0, 1.0 if with_head else 0.0, 0.1 if with_head else 0.0, trie_kl=1.0 if trie else 0.0)
        runs[name] = (model, opt, batch, teacher if name != "ce_only" else None, torch.ones(rows, dtype=torch.bool),
                      weights)

    def step(name):
        model, opt, batch, teacher, mask, weights = runs[name]
        t0 = time.perf_counter()
        loss = model(batch, teacher, mask, weights)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0

    times = {name: [] for name in runs}
    for name in runs:  # warm-up
        step(name)
    for _ in range(args.steps):
        for name in runs:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = int((runs["ce_only"][2].target_ids != -100).sum())
    print(f"student {args.student}, batch {args.batch} × {args.seq_bytes} bytes ({tokens} tokens), "
          f"threads {args.threads}, median of {args.steps} steps")
    for k, v in med.items():
        print(f"  {k:9s} {v * 1e3:8.1f} ms/step")
    print(f"RESULT trie/ce_only={med['trie'] / med['ce_only']:.3f}")
    print(f"RESULT bytehead/ce_only={med['bytehead'] / med['ce_only']:.3f}")


if __name__ == "__main__":
    main()
