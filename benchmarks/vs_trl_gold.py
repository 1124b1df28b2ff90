"""Benchmark: mergekd vs TRL's GOLD trainer (cross-tokenizer distillation) on the same job, side by side.

One teacher (``smollm2-135m``: SmolLM2-135M-Instruct dequantised to float32 from the offline GGUF; both trainers
get the very same weights, loaded by ``mergekd.teachers.load_teacher``), one tiny random student per tokenizer
family (the demo's size: 2 layers, 128 wide), built once and ``save_pretrained``ed, then trained three ways from
that folder:

- **mergekd**: ``python -m mergekd distill --student hf:INIT --teachers smollm2-135m`` with mergekd's best measured
  recipe (README "Which objective term"): token CE + the token-trie term, weight 3 (``--trie-kl-weight 3
  --kl-weight 0 --byte-ce-weight 0``), the teacher online (no byte cache, so both distillers pay the teacher's
  forward inside the timed run);
- **GOLD**: ``trl.experimental.gold.GOLDTrainer`` off-policy (``lmbda=0``: the student never generates) with its
  cross-tokenizer loss switched on (``use_uld_loss=True`` and ``teacher_tokenizer_name_or_path``, which its docs
  require for different tokenizers) and every other GOLD/ULD field at its default: ``uld_crossentropy_weight=0``
  (no ground-truth CE), ``uld_distillation_weight=1``, ``uld_token_merge_strategy="observed"``, no hybrid loss.
  The one family-dependent field follows GOLD's own help text: ``use_extended_uld=True`` (its default) for the
  ByteLevel student, ``False`` for the SentencePiece student ("Set to False for SentencePiece or other
  non-ByteLevel tokenizers"; with ``True`` GOLD refuses it: "Cross-tokenizer ULD currently supports only
  ByteLevel BPE tokenizers", see ``--gold-sp-extended-uld``). ``False`` is the original ULD: student token k is
  compared with teacher token k by position, whatever text each covers;
- **CE-only**: ``python -m mergekd distill --ce-only`` from the same folder (next-token CE, no teacher);
- **GOLD + CE** (``gold-ce``, in the default ``--arms``): GOLD as above with ``uld_crossentropy_weight=1``, the ULD
  paper's CE + distillation sum. ULD's distance compares *sorted* probability vectors, so without CE it says
  little about which token is right; this arm shows GOLD with the CE term its paper pairs it with.

Then every final model (and the untrained student) is scored with ``python -m mergekd eval`` on the same held-out
text (the model's own token NLL in bits per byte, comparable across tokenizers).

Same job, and the choices made where the two trainers differ:

- **data**: the first ``--train-bytes`` of *Botchan*'s body for training, its last ``--heldout-bytes`` held out
  (the demo's split), cut into ``--seq-bytes`` chunks by mergekd's own chunker. GOLD cannot train on plain text
  as is: for a ``text`` column its preparation makes the prompt empty, and its collator then raises "An example
  has no prompt tokens left after truncation" (every example needs at least one prompt token). So each chunk
  becomes a prompt/completion pair, the prompt being its first ``--prompt-bytes`` bytes extended to the next
  whitespace (a word or two: whole tokens for any tokenizer), and **every arm trains on the same pairs**: mergekd
  reads them as ``{"prompt", "response"}`` JSONL (loss on the response only, like GOLD's completion-only loss),
  GOLD as a ``prompt``/``completion`` dataset of plain strings. GOLD appends the student's EOS and tokenizes
  without BOS (its data path, kept as is); its ``max_length`` is set so that no chunk is ever truncated.
- **chunk size**: GOLD's extended-ULD loss merges probabilities group by group into a [groups, vocab] tensor, and
  its backward grows faster than the chunk (measured on the shared 2-core CPU, batch 8, GPT-2 student, with
  other jobs running: ~9-12 s per GOLD step at 128-byte chunks, ~70 s at 256 bytes; mergekd's steps ~2-7 s). The
  default 128-byte chunks and 60 steps keep one seed of all four arms within ~12 minutes on idle cores (3
  seeds, the default: 37 minutes measured); ``--seq-bytes 512`` is the demo's setting and makes the GOLD arm hours long.
- **steps, batch, seed**: the same optimizer steps, global batch (examples per step, no gradient accumulation)
  and seed. The data *order* differs (mergekd: epoch-wise permutations keyed by the seed; GOLD: TRL's
  ``RepeatSampler`` seeded with the same seed, which drops the last incomplete batch of each epoch); both visit
  ``steps × batch`` examples of the same set.
- **optimizer and learning-rate schedule**: identical. GOLD's trainer gets ``torch.optim.AdamW(lr,
  weight_decay=0)`` (what both HF's default ``adamw_torch`` and mergekd use; HF's default weight decay is 0 too)
  and a ``LambdaLR`` whose factor is mergekd's own ``lr_at`` (linear warm-up over ``--warmup-steps``, then cosine
  decay to 10% at the last step), so every step has the same learning rate in both (checked against GOLD's log,
  in the table's notes). HF's ``cosine_with_min_lr`` (``min_lr_rate=0.1``) is the same curve except that its
  warm-up starts at 0 (one step behind), hence the exact schedule. Gradient clipping: mergekd does not clip, so
  GOLD's ``max_grad_norm`` is 0 (off); ``--gold-max-grad-norm 1`` restores HF's default.
- **precision and memory tricks**: TRL's configs default to ``bf16=True`` and ``gradient_checkpointing=True``;
  mergekd on a CPU trains in float32 without checkpointing. Both GOLD settings follow mergekd (float32, no
  checkpointing): precision changes the numbers, checkpointing only costs time.
- **timing**: the wall time of each arm's training process from start to exit (imports, loading the student and
  the teacher, the steps, saving the final model); evaluation is outside it. The arms run one after another on
  the same machine. GOLD's own ``train_runtime`` (its training loop alone) is in the notes.

Output (also ``OUT/results.json`` and ``OUT/results.md``): a markdown table, one line per family
``family=… init_bpb=… mergekd_bpb=… gold_bpb=… ce_bpb=… gold_s/mergekd_s=…`` (means over ``--seeds``), and last
``RESULT mergekd_bpb=<x> gold_bpb=<y> ce_bpb=<z> gold_s/mergekd_s=<r>`` for the ByteLevel student. An arm that
fails is reported in the table with its error (BPB ``nan``) instead of stopping the benchmark.

Run (needs the ``bench`` extra: ``pip install -c constraints.txt -e '.[bench]'``):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vs_trl_gold.py --out runs/vs-trl-gold        # ≈ 37 min, 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vs_trl_gold.py --quick --out runs/vs-trl-gold-quick  # smoke

Rerunning with the same ``--out`` reuses the arms (and scores) already finished with the same settings. See
docs/vs-trl-gold.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = {  # family → the student's offline tokenizer (mergekd.assets)
    "bytelevel": "gpt2",  # byte-level BPE, 50,257 ids; differs from the teacher's (SmolLM2, 49,152)
    "sentencepiece": "mistral-v3",  # SentencePiece BPE + byte fallback, 32,768 ids (the demo's student)
}
ARMS = ("mergekd", "gold", "ce", "gold-ce")
DEFAULT_ARMS = ("mergekd", "gold", "ce", "gold-ce")
ARM_LABEL = {"init": "untrained student", "mergekd": "mergekd (token CE + trie KL ×3)",
             "gold": "GOLD off-policy (ULD, defaults)", "ce": "CE-only",
             "gold-ce": "GOLD off-policy + CE (uld_crossentropy_weight=1)"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/vs-trl-gold"))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 60; --quick: 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 3 steps, batch 4, 4 KB of training text, 2 KB held out")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (student initialisation and data order; "
                                                 "default 0,1,2, --quick: 0)")
    ap.add_argument("--families", default="bytelevel,sentencepiece", help=f"any of {', '.join(FAMILIES)}")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                    help=f"any of {', '.join(ARMS)} (gold-ce: GOLD with its ULD CE term at weight 1)")
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=None, help="chunks per optimizer step (default 8)")
    ap.add_argument("--seq-bytes", type=int, default=128,
                    help="bytes per training chunk (GOLD's extended-ULD backward grows faster than the chunk: "
                         "512-byte chunks make its arm hours long on a CPU)")
    ap.add_argument("--prompt-bytes", type=int, default=8,
                    help="each chunk's prompt: at least this many bytes, up to the next whitespace (GOLD needs a "
                         "non-empty prompt; no arm trains on it)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --steps (at least 1)")
    ap.add_argument("--train-bytes", type=int, default=None, help="default 32000 (the demo's)")
    ap.add_argument("--heldout-bytes", type=int, default=None, help="default 8000 (the demo's)")
    ap.add_argument("--student-shape", default="layers=2&hidden=128&heads=4&ctx=1024",
                    help="new:llama options of the fresh students (the demo's size; ctx fits a whole chunk)")
    ap.add_argument("--trie-kl-weight", type=float, default=3.0, help="mergekd arm's token-trie weight")
    ap.add_argument("--gold-max-grad-norm", type=float, default=0.0,
                    help="GOLD's gradient clipping (0 = off, as in mergekd; HF's default is 1)")
    ap.add_argument("--gold-sp-extended-uld", action="store_true",
                    help="SentencePiece student with GOLD's default use_extended_uld=True (its docs say False)")
    ap.add_argument("--gold-worker", type=Path, help=argparse.SUPPRESS)  # internal: run one GOLD arm
    args = ap.parse_args(argv)
    quick = args.quick
    for name, full, small in (("steps", 60, 3), ("batch_size", 8, 4), ("train_bytes", 32_000, 4096),
                              ("heldout_bytes", 8_000, 2048)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.warmup_steps is None:
        args.warmup_steps = max(1, args.steps // 10)
    if args.seeds is None:
        args.seeds = "0" if quick else "0,1,2"
    # the longest prompt a chunk may get; mergekd's --prompt-bytes (a prompt/response line keeps at most that
    # much prompt, and it must be below --seq-bytes) is set to it, so both trainers see the same prompts
    args.prompt_max_bytes = min(max(64, 2 * args.prompt_bytes), args.seq_bytes // 2)
    if args.prompt_bytes >= args.prompt_max_bytes:
        ap.error(f"--prompt-bytes {args.prompt_bytes} leaves no room: use less than {args.prompt_max_bytes}")
    return args


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` with stdout+stderr to ``log``; (return code, wall seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env()).returncode
    return rc, time.perf_counter() - t0


def _tail(log: Path, lines: int = 1) -> str:
    text = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.is_file() else []
    return " / ".join(text[-lines:])[-300:] or "no output"


def _done(folder: Path, key: dict) -> dict | None:
    marker = folder / "arm.json"
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return None
    return done if done.get("key") == key else None


def _write_json(path: Path, obj) -> None:
    from mergekd.io import write_atomic

    write_atomic(path, json.dumps(obj, indent=1))  # NaN stays NaN (json's default), read back by json.loads


def split_prompt(chunk: str, min_bytes: int, max_bytes: int) -> tuple[str, str]:
    """(prompt, completion) of a training chunk: the prompt is the chunk's first ``min_bytes`` bytes, extended to
    just before the next whitespace (so no word is split between the two, and the prompt holds at least one whole
    token of any tokenizer), at most ``max_bytes``."""
    raw = chunk.encode("utf-8")
    cut = next((i for i in range(min_bytes, min(max_bytes, len(raw))) if raw[i] in b" \t\r\n"), None)
    if cut is None:  # no whitespace in reach: cut at a character boundary
        from mergekd.text import utf8_prefix

        cut = len(utf8_prefix(raw, min_bytes))
    return raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")


def prepare_data(args) -> tuple[Path, Path, Path]:
    """``train.txt`` (the raw slice), ``train.jsonl`` (its chunks as prompt/response pairs, what every arm trains
    on) and ``heldout.txt``."""
    from mergekd.assets import text_slice
    from mergekd.data import load_chunks
    from mergekd.io import write_if_changed

    folder = args.out / "data"
    train, pairs, heldout = folder / "train.txt", folder / "train.jsonl", folder / "heldout.txt"
    write_if_changed(train, text_slice("botchan", 0, args.train_bytes))
    write_if_changed(heldout, text_slice("botchan", -args.heldout_bytes))
    lines = []
    for chunk in load_chunks(train, args.seq_bytes):  # mergekd's own chunking of the training text
        prompt, completion = split_prompt(chunk, args.prompt_bytes, args.prompt_max_bytes)
        if prompt.strip() and completion.strip():
            lines.append(json.dumps({"prompt": prompt, "response": completion}, ensure_ascii=False))
    write_if_changed(pairs, "\n".join(lines) + "\n")
    return train, pairs, heldout


def build_student(args, family: str, seed: int) -> Path:
    """The fresh student of (family, seed), saved once; every arm starts from this folder."""
    from mergekd.student import load_student

    spec = f"new:llama?tokenizer={FAMILIES[family]}&{args.student_shape}&seed={seed}"
    folder = args.out / family / f"seed{seed}" / "init"
    key = {"spec": spec}
    if _done(folder, key) is None:
        shutil.rmtree(folder, ignore_errors=True)
        model, tok = load_student(spec)
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        _write_json(folder / "arm.json", {"key": key})
    return folder


# --------------------------------------------------------------------------------------------------------------
# arms
# --------------------------------------------------------------------------------------------------------------


def run_mergekd(args, init: Path, train: Path, out: Path, seed: int, ce_only: bool) -> dict:
    cmd = [sys.executable, "-m", "mergekd", "distill", "--student", f"hf:{init}", "--data", str(train),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-bytes", str(args.seq_bytes),
           "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps), "--seed", str(seed),
           "--prompt-bytes", str(args.prompt_max_bytes), "--save-every", str(args.steps), "--keep-checkpoints", "1",
           "--device", "cpu", "--quiet",
           "--out", str(out)]
    if ce_only:
        cmd += ["--ce-only"]
    else:
        cmd += ["--teachers", args.teacher, "--trie-kl-weight", str(args.trie_kl_weight), "--kl-weight", "0",
                "--byte-ce-weight", "0"]
    return _train_arm(cmd, out)


def run_gold(args, init: Path, train: Path, out: Path, seed: int, family: str, ce_weight: float = 0.0) -> dict:
    extended = family == "bytelevel" or args.gold_sp_extended_uld
    spec = {"init": str(init), "train": str(train), "out": str(out), "seed": seed, "steps": args.steps,
            "batch_size": args.batch_size, "seq_bytes": args.seq_bytes, "lr": args.lr,
            "warmup_steps": args.warmup_steps, "teacher": args.teacher, "use_extended_uld": extended,
            "max_grad_norm": args.gold_max_grad_norm, "uld_crossentropy_weight": ce_weight}
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "gold-spec.json", spec)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gold-worker", str(out / "gold-spec.json")]
    result = _train_arm(cmd, out)
    result["use_extended_uld"] = extended
    info = out / "gold-info.json"
    if info.is_file():
        result.update(json.loads(info.read_text()))
    return result


def _train_arm(cmd: list[str], out: Path) -> dict:
    log = out.parent / f"{out.name}.log"
    rc, seconds = _run(cmd, log)
    final = out / "final"
    if rc != 0 or not final.is_dir():
        return {"ok": False, "seconds": seconds, "error": f"exit {rc}: {_tail(log)}", "log": str(log)}
    # mergekd always checkpoints at its last step (inside the timed run: ~1 s here); the final model is what counts
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return {"ok": True, "seconds": seconds, "final": str(final), "log": str(log)}


def evaluate(model: Path, heldout: Path, json_out: Path) -> float:
    if not json_out.is_file():
        log = json_out.with_suffix(".log")
        rc, _ = _run([sys.executable, "-m", "mergekd", "eval", "--model", str(model), "--data", str(heldout),
                      "--json", str(json_out)], log)
        if rc != 0:
            raise RuntimeError(f"mergekd eval of {model} failed: {_tail(log, 3)}")
    return float(json.loads(json_out.read_text())["bpb"])


def gold_worker(spec_path: Path) -> None:
    """One GOLD arm, in its own process (timed by the parent like the mergekd arms)."""
    import warnings
    from types import SimpleNamespace

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    from mergekd.distill.loop import lr_at
    from mergekd.teachers import load_teacher

    warnings.filterwarnings("ignore", category=UserWarning)
    s = json.loads(Path(spec_path).read_text())
    out = Path(s["out"])
    tok = AutoTokenizer.from_pretrained(s["init"])
    if tok.pad_token is None:  # GPT-2 has none; GOLD pads with it (padding positions are masked)
        tok.pad_token = tok.eos_token
    student = AutoModelForCausalLM.from_pretrained(s["init"], dtype=torch.float32)
    teacher = load_teacher(s["teacher"], device="cpu")  # the same float32 weights mergekd's teacher uses
    teacher_tok = out / "teacher-tokenizer"  # GOLD's teacher_tokenizer_name_or_path wants a name or a folder
    teacher.tokenizer.save_pretrained(str(teacher_tok))
    pairs = [json.loads(line) for line in Path(s["train"]).read_text(encoding="utf-8").splitlines() if line]
    # the very pairs the mergekd arms read (prompt/response → GOLD's prompt/completion, plain strings)
    dataset = Dataset.from_dict({"prompt": [p["prompt"] for p in pairs],
                                 "completion": [p["response"] for p in pairs]})
    config = GOLDConfig(
        output_dir=str(out / "trainer"), report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        # what must match the mergekd arms
        max_steps=s["steps"], per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=1,
        learning_rate=s["lr"], weight_decay=0.0, max_grad_norm=s["max_grad_norm"], seed=s["seed"],
        data_seed=s["seed"], bf16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0,
        max_length=s["seq_bytes"] + 8,  # a chunk of N bytes is at most N student tokens (+ EOS): never truncated
        # off-policy GOLD with its cross-tokenizer loss; the rest of GOLD/ULD at its defaults
        lmbda=0.0, use_uld_loss=True, teacher_tokenizer_name_or_path=str(teacher_tok),
        use_extended_uld=s["use_extended_uld"],
        **({"uld_crossentropy_weight": s["uld_crossentropy_weight"]} if s["uld_crossentropy_weight"] else {}),
    )
    sched_cfg = SimpleNamespace(lr=s["lr"], warmup_steps=s["warmup_steps"], steps=s["steps"])
    optimizer = torch.optim.AdamW(student.parameters(), lr=s["lr"], weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, sched_cfg) / s["lr"])
    trainer = GOLDTrainer(model=student, teacher_model=teacher.model, args=config, processing_class=tok,
                          train_dataset=dataset, optimizers=(optimizer, scheduler))
    result = trainer.train()
    trainer.save_model(str(out / "final"))
    tok.save_pretrained(str(out / "final"))
    logged = [r for r in trainer.state.log_history if "learning_rate" in r and "loss" in r]
    # the rate HF logs at global step k is the one step k trained with: mergekd's lr_at(k - 1)
    lr_err = max((abs(r["learning_rate"] - lr_at(int(r["step"]) - 1, sched_cfg)) for r in logged),
                 default=float("nan"))
    info = {"train_runtime": result.metrics.get("train_runtime"), "final_loss": logged[-1]["loss"] if logged else None,
            "first_loss": logged[0]["loss"] if logged else None, "lr_max_abs_diff_vs_mergekd": lr_err,
            "examples": len(pairs), "steps_done": trainer.state.global_step}
    _write_json(out / "gold-info.json", info)
    print(json.dumps(info))


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 4) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else float("nan")


def summarise(rows: list[dict], families: list[str]) -> dict[str, dict]:
    summary = {}
    for fam in families:
        def pick(arm, field):
            return [r.get(field, float("nan")) for r in rows if r["family"] == fam and r["arm"] == arm]

        m_s, g_s = _mean(pick("mergekd", "seconds")), _mean(pick("gold", "seconds"))
        summary[fam] = {"mergekd_bpb": _mean(pick("mergekd", "bpb")), "gold_bpb": _mean(pick("gold", "bpb")),
                        "ce_bpb": _mean(pick("ce", "bpb")), "init_bpb": _mean(pick("init", "bpb")),
                        "gold_ce_bpb": _mean(pick("gold-ce", "bpb")),
                        "gold_s/mergekd_s": g_s / m_s if m_s and not math.isnan(m_s) else float("nan")}
    return summary


def markdown(rows: list[dict], args) -> str:
    lines = [f"{args.steps} steps × batch {args.batch_size} × {args.seq_bytes} bytes, lr {args.lr:g} "
             f"(warm-up {args.warmup_steps}, cosine to 10%), teacher {args.teacher}; held-out: last "
             f"{args.heldout_bytes:,} bytes of Botchan, scored by `mergekd eval` (own-token BPB).", "",
             "| student | arm | seed | held-out BPB | train wall s | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("note", "")
        lines.append(f"| {r['family']} ({FAMILIES[r['family']]}) | {ARM_LABEL[r['arm']]} | {r['seed']} | "
                     f"{_fmt(r.get('bpb'))} | {_fmt(r.get('seconds'), 1) if r['arm'] != 'init' else '—'} | {note} |")
    lines += ["", *seed_summary(rows)]
    return "\n".join(lines) + "\n"


def seed_summary(rows: list[dict]) -> list[str]:
    """Per family and arm over the seeds: mean held-out BPB ± the 95% t-interval half-width, and the paired
    difference to CE-only of the same seed (cell − CE; negative = better than CE-only) with its interval; the
    statistics are mergekd ablate's (:mod:`mergekd.ablate.stats`), so one seed gets no interval."""
    from mergekd.ablate.stats import paired_differences, summarize

    def pm(stats: dict, signed: bool = False) -> str:
        if stats["mean"] is None:
            return "—"
        mean = f"{stats['mean']:+.4f}" if signed else f"{stats['mean']:.4f}"
        return mean if stats["half"] is None else f"{mean} ± {stats['half']:.4f}"

    out = ["Over the seeds: mean ± 95% t-interval half-width; Δ = arm − CE-only of the same seed (paired).", "",
           "| student | arm | seeds | held-out BPB | Δ vs CE-only | train wall s (mean) |", "|---|---|---|---|---|---|"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        def per_seed(arm, field="bpb"):
            return {r["seed"]: r[field] for r in rows if r["family"] == fam and r["arm"] == arm
                    and r.get(field) is not None and not math.isnan(r[field])}

        ce = per_seed("ce")
        for arm in dict.fromkeys(r["arm"] for r in rows if r["family"] == fam):
            bpb = per_seed(arm)
            delta = summarize(paired_differences(bpb, ce).values()) if arm != "ce" and ce else None
            secs = per_seed(arm, "seconds") if arm != "init" else {}
            out.append(f"| {fam} | {ARM_LABEL[arm]} | {' '.join(map(str, bpb))} | {pm(summarize(bpb.values()))} | "
                       f"{pm(delta, signed=True) if delta else '—'} | "
                       f"{_fmt(_mean(list(secs.values())), 1) if secs else '—'} |")
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.gold_worker is not None:
        gold_worker(args.gold_worker)
        return
    families = [f for f in args.families.split(",") if f]
    arms = [a for a in args.arms.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f"unknown family {f!r}; choose from {', '.join(FAMILIES)}")
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"unknown arm {a!r}; choose from {', '.join(ARMS)}")
    if any(a.startswith("gold") for a in arms):
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("the GOLD arm needs TRL: pip install -c constraints.txt -e '.[bench]'") from None
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _, train, heldout = prepare_data(args)
    common = {"steps": args.steps, "batch_size": args.batch_size, "seq_bytes": args.seq_bytes, "lr": args.lr,
              "warmup_steps": args.warmup_steps, "teacher": args.teacher, "prompt_bytes": args.prompt_bytes,
              "data": hashlib.sha256(train.read_bytes() + b"\0" + heldout.read_bytes()).hexdigest(),
              "shape": args.student_shape}
    rows: list[dict] = []
    for family in families:
        for seed in seeds:
            init = build_student(args, family, seed)
            base = init.parent
            rows.append({"family": family, "arm": "init", "seed": seed,
                         "bpb": evaluate(init, heldout, base / "eval-init.json")})
            for arm in arms:
                out = base / arm
                key = {**common, "arm": arm, "seed": seed, "family": family,
                       **({"trie_kl_weight": args.trie_kl_weight} if arm == "mergekd" else {}),
                       **({"gold_max_grad_norm": args.gold_max_grad_norm, "worker": 2,
                           "sp_extended": args.gold_sp_extended_uld} if arm.startswith("gold") else {})}
                done = _done(out, key)
                if done is None:
                    shutil.rmtree(out, ignore_errors=True)
                    (base / f"eval-{arm}.json").unlink(missing_ok=True)
                    print(f"[{family} seed {seed}] training: {ARM_LABEL[arm]} ...", flush=True)
                    if arm in ("gold", "gold-ce"):
                        result = run_gold(args, init, train, out, seed, family, 1.0 if arm == "gold-ce" else 0.0)
                    else:
                        result = run_mergekd(args, init, train, out, seed, ce_only=arm == "ce")
                    done = {"key": key, "result": result}
                    if result["ok"]:
                        _write_json(out / "arm.json", done)
                result = done["result"]
                row = {"family": family, "arm": arm, "seed": seed, "seconds": result["seconds"]}
                if result["ok"]:
                    row["bpb"] = evaluate(Path(result["final"]), heldout, base / f"eval-{arm}.json")
                    if arm.startswith("gold"):
                        row["note"] = (f"use_extended_uld={result['use_extended_uld']}; loop "
                                       f"{_fmt(result.get('train_runtime'), 1)} s; loss "
                                       f"{_fmt(result.get('first_loss'), 3)} → {_fmt(result.get('final_loss'), 3)}; "
                                       f"lr vs mergekd max |Δ| {result.get('lr_max_abs_diff_vs_mergekd', 0):.1e}")
                else:
                    row["bpb"] = float("nan")
                    row["note"] = "FAILED: " + result["error"].replace("|", "/")
                print(f"[{family} seed {seed}] {arm}: BPB {_fmt(row['bpb'])}, {row['seconds']:.1f} s "
                      f"{row.get('note', '')}", flush=True)
                rows.append(row)
    summary = summarise(rows, families)
    table = markdown(rows, args)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "summary": summary,
              "total_seconds": round(time.perf_counter() - t_start, 1)}
    _write_json(args.out / "results.json", report)
    from mergekd.io import write_if_changed

    write_if_changed(args.out / "results.md", table)
    print()
    print(table)
    print(f"total {report['total_seconds']:.0f} s")
    for fam in families:
        s = summary[fam]
        extra = f" gold_ce_bpb={_fmt(s['gold_ce_bpb'])}" if "gold-ce" in arms else ""
        print(f"family={fam} init_bpb={_fmt(s['init_bpb'])} mergekd_bpb={_fmt(s['mergekd_bpb'])} "
              f"gold_bpb={_fmt(s['gold_bpb'])} ce_bpb={_fmt(s['ce_bpb'])}{extra} "
              f"gold_s/mergekd_s={_fmt(s['gold_s/mergekd_s'], 2)}")
    s = summary.get("bytelevel")
    if s is not None:
        print(f"RESULT mergekd_bpb={_fmt(s['mergekd_bpb'])} gold_bpb={_fmt(s['gold_bpb'])} "
              f"ce_bpb={_fmt(s['ce_bpb'])} gold_s/mergekd_s={_fmt(s['gold_s/mergekd_s'], 2)}")


if __name__ == "__main__":
    main()
