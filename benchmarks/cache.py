"""Benchmark: the teacher byte cache — bytes stored per text byte, reconstruction KL, and a distillation step
with targets from online teachers vs from the cache, side by side in one run.

1. Capture the two real teachers (SmolLM2-135M, Gemma-3-270m) over the first ``--kb`` KB of botchan in
   ``--seq-bytes`` chunks (resumes if ``--work`` already holds the cache; then no teacher is run).
2. Print bytes stored per text byte (all shard files, headers included), total and per teacher.
3. Load both teachers, compute their dense targets of the step's chunks, report mean/max KL(dense ‖ cached).
4. Time one optimizer step of a fresh small student (token CE + byte CE + KL to the linear mixture), with the
   mixture from the online teachers (``TeacherSignal``) or from the cache (``CachedSignal``), alternating.

Last line: ``RESULT bytes_per_text_byte=<x> online/cached=<y>``.
Run: python benchmarks/cache.py [--kb 24] [--batch 4] [--steps 2] [--work runs/bench-cache]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from mergekd.assets import read_text  # noqa: E402
from mergekd.bytes import byte_vocab_for  # noqa: E402
from mergekd.cache import CachedSignal, capture_cache, kl_per_row, read_manifest  # noqa: E402
from mergekd.data import load_chunks  # noqa: E402
from mergekd.distill.batch import build_student_batch  # noqa: E402
from mergekd.distill.config import DistillConfig  # noqa: E402
from mergekd.distill.objective import LossWeights, StudentWithHead  # noqa: E402
from mergekd.distill.signal import TeacherSignal  # noqa: E402
from mergekd.mix import build_mixer  # noqa: E402
from mergekd.student import build_byte_head, load_student  # noqa: E402
from mergekd.teachers import load_teacher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachers", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--kb", type=float, default=24, help="KB of botchan to capture")
    ap.add_argument("--seq-bytes", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--tail", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--kl-chunks", type=int, default=8, help="chunks (evenly spread) on which KL is measured")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one warm-up each)")
    ap.add_argument("--student", default="new:llama?tokenizer=mistral-v3&layers=4&hidden=256&heads=4&ctx=512")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-cache"))
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    specs = [s.strip() for s in args.teachers.split(",") if s.strip()]

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "botchan-head.txt"
    text = read_text("botchan").encode("utf-8")[: int(args.kb * 1024)].decode("utf-8", errors="ignore")
    if not data.is_file() or data.read_text() != text:
        data.write_text(text)
    cache = args.work / "cache"
    if (cache / "manifest.json").is_file():
        import json
        import shutil

        from mergekd.cache.manifest import FORMAT_VERSION

        if json.loads((cache / "manifest.json").read_text()).get("format_version") != FORMAT_VERSION:
            print(f"{cache} was captured by another mergekd cache format: capturing it again")
            shutil.rmtree(cache)

    # 1-2. capture (one teacher in memory at a time) and storage
    t0 = time.perf_counter()
    capture_cache(cache, specs, data, top_k=args.top_k, tail=args.tail, seq_bytes=args.seq_bytes, max_length=512)
    capture_s = time.perf_counter() - t0
    summary = read_manifest(cache).summary()
    print(f"cache: {summary['chunks']} chunks, {summary['text_bytes']} text bytes, top-{args.top_k}, tail "
          f"{args.tail:g}; capture (or resume) {capture_s:.1f} s")
    for t in summary["teachers"]:
        print(f"  {t['teacher']:14s} {t['bytes']:9d} bytes  {t['bytes_per_text_byte']:6.2f} bytes/text byte  "
              f"{t['entries_per_row']:.2f} entries/row")
    print(f"  {'total':14s} {summary['bytes']:9d} bytes  {summary['bytes_per_text_byte']:6.2f} bytes/text byte")

    # 3. online teachers, the cache, and the chunks of the step
    chunks = load_chunks(data, args.seq_bytes)

    def spread(count: int) -> list[int]:
        full = max(1, len(chunks) - 1)  # the last chunk is usually short: spread over the others
        return sorted({round(i * (full - 1) / max(1, count - 1)) for i in range(count)})

    idx, kl_idx = spread(args.batch), spread(args.kl_chunks)
    texts, kl_texts = [chunks[i] for i in idx], [chunks[i] for i in kl_idx]
    teachers = [load_teacher(s, overrides={"device": "cpu", "max_length": 512}) for s in specs]
    online = TeacherSignal(teachers, build_mixer("linear"), torch.device("cpu"))
    cfg = DistillConfig(teachers=specs, student=args.student, data=data, out=args.work / "run",
                        seq_bytes=args.seq_bytes, mix="linear")
    cached = CachedSignal(cache, cfg)
    dense = online.per_teacher(kl_texts, kl_idx)  # also warms the teachers up (trie indexes, allocator)
    from_cache = cached.per_teacher(kl_texts, kl_idx)
    print(f"KL(dense ‖ cached) over {len(kl_texts)} chunks ({sum(len(t.encode()) for t in kl_texts)} bytes):")
    worst = 0.0
    for name, d_list, c_list in zip(cached.names, dense, from_cache):
        kl = torch.cat([kl_per_row(d.logprobs, c.logprobs, d.mask & c.mask) for d, c in zip(d_list, c_list)])
        worst = max(worst, float(kl.mean()))
        print(f"  {name:14s} mean {float(kl.mean()):.5f}  max {float(kl.max()):.4f} nats/byte over {kl.numel()} rows")

    # 4. distillation steps, alternating online / cached
    student, tok = load_student(args.student)
    head = build_byte_head("parallel", student.config.hidden_size, 10)
    model = StudentWithHead(student, head).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab = byte_vocab_for(tok)
    weights = LossWeights()

    def step(signal) -> float:
        start = time.perf_counter()
        batch, _ = build_student_batch(vocab, texts, 10, 512, tok.pad_token_id or 0)
        teacher_lp, teacher_mask = signal(texts, idx)
        loss = model(batch, teacher_lp, teacher_mask, weights)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"online": [], "cached": []}
    step(cached)  # warm-up (the online teachers were warmed above)
    for _ in range(args.steps):
        times["online"].append(step(online))
        times["cached"].append(step(cached))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"distill step: student {args.student}, batch {len(texts)} × {args.seq_bytes} bytes, threads "
          f"{args.threads}, median of {args.steps}")
    for k, v in med.items():
        print(f"  {k:7s} {v * 1e3:10.1f} ms/step")
    print(f"worst mean KL(dense ‖ cached) {worst:.5f} nats/byte")
    ratio = med["online"] / med["cached"]
    print(f"RESULT bytes_per_text_byte={summary['bytes_per_text_byte']:.2f} online/cached={ratio:.2f}")


if __name__ == "__main__":
    main()
