"""GPU smoke test: does mergekd's byte path run on a GPU, agree with the CPU, and what does it cost there?

Run it when a GPU machine is available (one H100/H200-class GPU; it finishes within ~8 minutes there). No test
needs a GPU: ``tests/test_gpu_smoke.py`` runs the ``--device cpu --tiny`` dry run so this script cannot rot.

On a GPU machine with network (setup.sh installs everything, the offline assets included; nothing is
downloaded while the script runs):

    bash scripts/setup.sh && HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_smoke.py --device cuda

setup.sh pins torch==2.13.0 (constraints.txt): from PyPI on Linux that is a CUDA build, from a CPU-only index
it is not. The script prints ``torch.__version__`` and ``torch.version.cuda`` first and stops with one line if
``--device cuda`` finds no GPU. On a machine with no network but a CUDA ``python3`` that already holds torch,
transformers and accelerate, put the repo on PYTHONPATH, bring mergekd's missing pure-Python dependencies (e.g.
pydantic) as wheels, and copy the converted offline assets into the git-ignored ``.mergekd-cache`` (tokenizers
``smollm2-v1``, ``mistral-v3-v1`` (+ ``gemma3-v1`` for that vocab), ``texts/botchan.txt`` from
``~/.cache/mergekd``). The real teacher's GGUF (98 MB) may be too big to bring; ``--teacher random:smollm2-135m``
then uses a random-weight model of its exact shape (same compute, so the same timings):

    MERGEKD_CACHE=.mergekd-cache HF_HUB_OFFLINE=1 PYTHONPATH=. python3 benchmarks/gpu_smoke.py --device cuda \\
        --teacher random:smollm2-135m --vocabs smollm2

Steps, each printing progress and one ``RESULT`` line:

  1. the device: ``RESULT gpu=<name> capability=<major.minor> memory_gib=<x> bf16=<0|1> torch=<v> cuda=<v>``
     (``gpu=none`` with ``--device cpu``);
  2. byte targets of the teacher (SmolLM2-135M by default) on real text (Botchan), captured on the device and
     on the CPU: ``RESULT gpu_vs_cpu_max_abs=<nats> kl_bits=<bits/byte>``, the largest |Δ log p| over all
     entries of the defined rows (nats) and the mean KL(CPU ‖ device) per defined byte row (bits);
  3. costs on the device, as in ``benchmarks/byte_conversion.py`` (interleaved repeats; median of per-repeat
     ratios, and min/min): ``RESULT capture_over_forward=<x> capture_over_forward_min=<x>
     convert_over_logsoftmax=<x> convert_over_logsoftmax_min=<x>`` — capture time over the teacher's
     forward + log_softmax on the same windows, and conversion time over log_softmax into a reused buffer on
     the same logits (worst vocab);
  4. ``--steps`` distillation steps of a fresh ~0.65B-parameter student (Mistral-v3 tokenizer, built from a
     ``new:`` spec, no download), bf16 mixed precision on a GPU, CE-only vs the token-trie term
     (``trie_kl_weight=3``, teacher rows from a byte cache captured on the device first, so the trie step
     pays for the term and the cache lookup, not for a teacher forward):
     ``RESULT step_s_ce=<s> step_s_trie=<s> trie_over_ce=<x> peak_gpu_gib=<GiB>`` (median step time after
     warm-up steps; peak ``torch.cuda.max_memory_allocated`` over both runs; 0 on the CPU).

``--tiny``: a 1-layer random teacher over the real SmolLM2 tokenizer and a 1-layer student over the real
Mistral-v3 tokenizer, few texts and positions: the dry run (seconds on a CPU).

Options: ``--device cuda|cpu`` ``--tiny`` ``--steps N`` ``--out DIR`` (default: a new temporary folder; run folders
are deleted after their metrics are copied out, since a 0.65B student's checkpoint is GBs) ``--teacher SPEC``
``--student SPEC`` ``--vocabs a,b`` ``--repeats N``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # byte_conversion.py, beside this file

import torch  # noqa: E402

try:
    import byte_conversion as bc  # noqa: E402
    from mergekd.assets import load_tokenizer, read_body  # noqa: E402
except ImportError as exc:  # the one line a maintainer needs on a fresh machine
    sys.exit(f"gpu_smoke: cannot import mergekd ({exc}); run from the repo root after `bash scripts/setup.sh`, "
             "or with PYTHONPATH=. and mergekd's dependencies installed")

BIG_STUDENT = "new:llama?tokenizer=mistral-v3&layers=16&hidden=1536&heads=12&ctx=1024"
TINY_STUDENT = "new:llama?tokenizer=mistral-v3&layers=1&hidden=32&heads=2&ctx=256"
# Sizes per mode: texts for steps 2-3, positions of the conversion benchmark, the distillation batch.
SIZES = {
    "full": dict(agree_texts=4, texts=32, text_bytes=3000, positions=4096, repeats=5, batch_size=16,
                 seq_bytes=2048, lr=3e-4, teacher_max_length=1024),
    "tiny": dict(agree_texts=2, texts=2, text_bytes=300, positions=48, repeats=1, batch_size=2,
                 seq_bytes=128, lr=1e-3, teacher_max_length=128),
}


def result(**fields) -> None:
    """One ``RESULT key=value ...`` line (floats with 4 significant digits), flushed at once for log tails."""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()]
    print("RESULT " + " ".join(parts), flush=True)


def say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------------------
# Step 1: the device
# ------------------------------------------------------------------------------------------------------------


def check_device(device: str) -> dict:
    """Name, capability and memory of the GPU; stop with one clear line when --device cuda has none."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    say(f"step 1: torch {info['torch']}, CUDA build {info['cuda']}, device {device}")
    if device == "cpu":
        say("  skipped (--device cpu)")
        result(gpu="none", **info)
        return info
    if not torch.cuda.is_available():
        sys.exit(f"gpu_smoke: --device cuda, but this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees "
                 "no GPU; install a CUDA build of torch (see this script's docstring) or run --device cpu")
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name.replace(" ", "_"), capability=f"{props.major}.{props.minor}",
                memory_gib=round(props.total_memory / 2**30, 1), bf16=int(torch.cuda.is_bf16_supported()))
    say(f"  {props.name}, capability {props.major}.{props.minor}, {info['memory_gib']} GiB, "
        f"{props.multi_processor_count} SMs")
    result(gpu=info["gpu"], capability=info["capability"], memory_gib=info["memory_gib"], bf16=info["bf16"],
           torch=info["torch"], cuda=info["cuda"])
    return info


# ------------------------------------------------------------------------------------------------------------
# Step 2: device vs CPU byte targets
# ------------------------------------------------------------------------------------------------------------


def load_smoke_teacher(spec: str, tiny: bool):
    """The teacher of steps 2-4 on the CPU: a registered/hf:/gguf: spec, ``random:smollm2-135m`` (its shape with
    random weights, for machines without the GGUF), or with --tiny a 1-layer random Llama over SmolLM2's tokenizer."""
    from mergekd.teachers import Teacher, TeacherOptions, load_teacher

    t0 = time.perf_counter()
    if tiny:
        tok = load_tokenizer("smollm2")
        model = bc.random_llama(len(tok), hidden=32, intermediate=64, layers=1, heads=2, kv_heads=2, positions=256)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 1.0)  # sharper than the default init: rows far from uniform
        teacher = Teacher("tiny-smollm2", model, tok, options=TeacherOptions(max_length=128))
    elif spec == "random:smollm2-135m":
        teacher = bc.random_smollm2_teacher()
    else:
        teacher = load_teacher(spec)
    params = sum(p.numel() for p in teacher.model.parameters())
    say(f"  teacher {teacher.name}: {params / 1e6:.1f}M params, vocab {len(teacher.vocab)}, loaded in "
        f"{time.perf_counter() - t0:.1f} s")
    return teacher


def compare_targets(ref: list, other: list) -> dict:
    """Max |Δ log p| (nats) and |Δ p| over defined rows, and mean KL(ref ‖ other) in bits per byte row.

    Entries that are -inf on both sides (bytes no token can continue with) count as equal; a byte with mass on
    one side and none on the other makes the difference and the KL infinite, which is what it should report.
    """
    a = torch.cat([t.logprobs.cpu() for t in ref]).double()
    b = torch.cat([t.logprobs.cpu() for t in other]).double()
    mask = torch.cat([t.mask.cpu() for t in ref])
    if not torch.equal(mask, torch.cat([t.mask.cpu() for t in other])):
        sys.exit("gpu_smoke: the device and the CPU disagree on which byte rows are defined (a tokenization bug)")
    a, b = a[mask], b[mask]
    same = a == b  # covers -inf == -inf
    nats = torch.where(same, torch.zeros_like(a), (a - b).abs())
    p = a.exp()
    kl = torch.where(p > 0, p * (a - b), torch.zeros_like(a)).sum(1)
    return {"rows": int(mask.sum()), "max_abs": float(nats.max()), "max_abs_prob": float((p - b.exp()).abs().max()),
            "kl_bits": float(kl.mean() / math.log(2))}


def device_vs_cpu(teacher, texts: list[str], device: str) -> dict:
    """Capture ``texts`` on the CPU, then on ``device`` (teacher moved there), and compare."""
    say(f"step 2: byte targets on {device} vs the CPU ({len(texts)} texts, "
        f"{sum(len(t.encode('utf-8')) for t in texts)} bytes)")
    t0 = time.perf_counter()
    on_cpu = teacher.to("cpu").byte_targets(texts)
    t1 = time.perf_counter()
    on_dev = teacher.to(device).byte_targets(texts)
    t2 = time.perf_counter()
    r = compare_targets(on_cpu, on_dev)
    say(f"  CPU {t1 - t0:.2f} s, {device} {t2 - t1:.2f} s (first call: index build + warm-up); {r['rows']} defined "
        f"rows, max |Δp| {r['max_abs_prob']:.3g}")
    if not (math.isfinite(r["max_abs"]) and math.isfinite(r["kl_bits"])):
        say("  FAIL: a byte has mass on one side only")
    elif r["kl_bits"] > 1e-4:
        say("  WARNING: mean KL above 1e-4 bits/byte; expected float32 rounding only")
    result(gpu_vs_cpu_max_abs=r["max_abs"], kl_bits=r["kl_bits"])
    return r


# ------------------------------------------------------------------------------------------------------------
# Step 3: costs on the device
# ------------------------------------------------------------------------------------------------------------


def device_costs(teacher, texts: list[str], vocabs: list[str], positions: int, repeats: int, device: str) -> dict:
    """Capture over forward+log_softmax (same windows), and conversion over reused-buffer log_softmax per vocab."""
    say(f"step 3: costs on {device} (interleaved, {repeats} repeats)")
    cap = bc.measure_capture(teacher.to(device), texts, repeats)
    bc.print_capture(teacher, cap)
    body = read_body("botchan")
    worst = None
    for name in vocabs:
        r = bc.measure_conversion(name, body, positions, repeats, device)
        bc.print_conversion(r)
        r = {k: r[k] for k in ("name", "ratio", "ratio_min", "times")}  # drop the logits (GBs on the device)
        worst = r if worst is None or r["ratio"] > worst["ratio"] else worst
        free_device_memory(device)
    result(capture_over_forward=cap["ratio"], capture_over_forward_min=cap["ratio_min"],
           convert_over_logsoftmax=worst["ratio"], convert_over_logsoftmax_min=worst["ratio_min"])
    return {"capture": {k: cap[k] for k in ("ratio", "ratio_min", "times")}, "conversion_worst": worst}


def free_device_memory(device: str) -> None:
    """Return cached blocks, so the next measurement's peak memory is its own."""
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------
# Step 4: distillation steps, CE-only vs the token-trie term
# ------------------------------------------------------------------------------------------------------------


def student_params(spec: str) -> int:
    """Parameter count of a student spec, built on the meta device (no memory, no init, seconds)."""
    from mergekd.student import load_student

    with torch.device("meta"):
        model, _ = load_student(spec)
    return sum(p.numel() for p in model.parameters())


def teacher_spec_for_cache(teacher, spec: str, tiny: bool, out: Path) -> str:
    """A spec ``capture_cache`` can load: the spec itself, or (in-memory teachers) a saved hf: folder."""
    if not tiny and spec != "random:smollm2-135m":
        return spec
    folder = out / "teacher"
    if not folder.exists():
        teacher.model.to("cpu").save_pretrained(folder)
        teacher.tokenizer.save_pretrained(folder)
    return f"hf:{folder}"


def write_data(out: Path, nbytes: int) -> Path:
    """The training file: the first ``nbytes`` characters of Botchan's body (all of it if shorter)."""
    path = out / "train.txt"
    path.write_text(read_body("botchan")[:nbytes], encoding="utf-8")
    return path


def step_seconds(cfg) -> list[float]:
    """Seconds of every logged step, from metrics.jsonl (the loop times each step after the loss is read back,
    so GPU work is finished)."""
    return [json.loads(line)["step_s"] for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]


def distill_run(name: str, base: dict, extra: dict, out: Path, device: str) -> dict:
    """One distillation through the library API; step times after warm-up, peak GPU memory, then the run
    folder is deleted (its checkpoint holds weights + Adam state: GBs for a 0.65B student)."""
    from mergekd.distill import distill, load_config

    cfg = load_config(None, {**base, **extra, "out": str(out / name)})
    free_device_memory(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    distill(cfg, show_progress=False)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    seconds = step_seconds(cfg)
    warm = min(2, len(seconds) - 1)  # the first steps pay for kernel selection and optimizer-state allocation
    shutil.copy(Path(cfg.out) / "metrics.jsonl", out / f"metrics-{name}.jsonl")
    shutil.rmtree(cfg.out)
    step_s = statistics.median(seconds[warm:])
    say(f"  {name:5s}: {step_s * 1e3:9.1f} ms/step (median of steps {warm + 1}-{len(seconds)}; first "
        f"{seconds[0]:.2f} s), peak GPU {peak:.2f} GiB, whole run incl. build/checkpoint/export {wall:.1f} s")
    return {"step_s": step_s, "steps": seconds, "peak_gib": peak, "wall_s": wall}


def distill_steps(args, teacher, sizes: dict, out: Path) -> dict:
    """CE-only and token-trie runs of the same fresh student on the same data and seed."""
    from mergekd.cache import capture_cache

    params = student_params(args.student)
    say(f"step 4: {args.steps} distillation steps of {args.student} ({params / 1e6:.1f}M params), batch "
        f"{sizes['batch_size']} × {sizes['seq_bytes']} B, mixed precision {precision(args.device)}")
    spec = teacher_spec_for_cache(teacher, args.teacher, args.tiny, out)
    teacher.close()  # capture_cache loads its own copy; the GPU should hold the student only
    free_device_memory(args.device)
    data = write_data(out, args.steps * sizes["batch_size"] * sizes["seq_bytes"])
    t0 = time.perf_counter()
    capture_cache(out / "cache", [spec], data, seq_bytes=sizes["seq_bytes"], device=args.device,
                  max_length=sizes["teacher_max_length"], show_progress=False)
    say(f"  byte cache of {data.stat().st_size} bytes captured on {args.device} in {time.perf_counter() - t0:.1f} s")
    base = {"student": args.student, "data": str(data), "steps": args.steps, "batch_size": sizes["batch_size"],
            "seq_bytes": sizes["seq_bytes"], "lr": sizes["lr"], "warmup_steps": max(1, args.steps // 4),
            "save_every": args.steps, "keep_checkpoints": 1, "device": args.device,
            "mixed_precision": precision(args.device)}
    ce = distill_run("ce", base, {"byte_ce_weight": 0.0, "kl_weight": 0.0}, out, args.device)
    trie = distill_run("trie", base, {"cache": str(out / "cache"), "trie_kl_weight": 3.0, "byte_ce_weight": 0.0,
                                      "kl_weight": 0.0}, out, args.device)
    shutil.rmtree(out / "teacher", ignore_errors=True)  # a saved in-memory teacher (the cache's run check reads it)
    peak = max(ce["peak_gib"], trie["peak_gib"])
    result(step_s_ce=ce["step_s"], step_s_trie=trie["step_s"], trie_over_ce=trie["step_s"] / ce["step_s"],
           peak_gpu_gib=peak)
    return {"params": params, "ce": ce, "trie": trie, "peak_gpu_gib": peak}


def precision(device: str) -> str:
    """bf16 autocast where the GPU has it (H100/H200 do), full precision elsewhere (and always on the CPU)."""
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"


# ------------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny teacher and student on real tokenizers: the dry run")
    ap.add_argument("--steps", type=int, default=20, help="distillation steps per run (default 20)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--teacher", default="smollm2-135m",
                    help="teacher spec, or random:smollm2-135m (its shape, random weights); ignored with --tiny")
    ap.add_argument("--student", default=None, help=f"student spec (default {BIG_STUDENT}; tiny with --tiny)")
    ap.add_argument("--vocabs", default=None, help="tokenizers of the conversion cost (default smollm2,gemma3; "
                                                   "smollm2 with --tiny)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats in step 3")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    args.student = args.student or (TINY_STUDENT if args.tiny else BIG_STUDENT)
    args.vocabs = [v.strip() for v in (args.vocabs or ("smollm2" if args.tiny else "smollm2,gemma3")).split(",")
                   if v.strip()]
    args.out = args.out or Path(tempfile.mkdtemp(prefix="gpu_smoke-"))
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    sizes = dict(SIZES["tiny" if args.tiny else "full"])
    sizes["repeats"] = args.repeats or sizes["repeats"]
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "sizes": sizes}
    report["device"] = check_device(args.device)
    texts = bc.capture_texts(sizes["text_bytes"], sizes["texts"])
    teacher = load_smoke_teacher(args.teacher, args.tiny)
    report["agreement"] = device_vs_cpu(teacher, texts[: sizes["agree_texts"]], args.device)
    report["costs"] = device_costs(teacher, texts, args.vocabs, sizes["positions"], sizes["repeats"], args.device)
    report["distill"] = distill_steps(args, teacher, sizes, args.out)
    report["total_s"] = time.perf_counter() - start
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    say(f"done in {report['total_s']:.0f} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
