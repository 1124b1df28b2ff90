"""Benchmark: what byte targets cost, against the fairest floors we know.

Two measurements, side by side in one run, with interleaved repeats (each repeat times both sides back to back,
so machine noise hits both):

  (1) Conversion alone, per real tokenizer (SmolLM2, V = 49,152; Gemma-3, V = 262,144): random teacher logits
      for the canonical tokenization of a real text (Botchan), converted into next-byte log-probs for every
      byte, against ``log_softmax`` over the same logits written into a reused buffer, chunked like the
      conversion — the floor: any byte conversion must at least read the logits once. Also shown: a plain
      ``log_softmax`` (fresh multi-GB output, page faults included) and a naive per-position trie walk (Python
      dict trie, summing each child's subtree token by token) on a few byte rows, extrapolated.
  (2) End to end, what users feel: mergekd's capture (``teacher_byte_logprobs_batch``: tokenise, forward,
      convert, assemble) of real text windows with the real teacher (SmolLM2-135M, the offline GGUF), against
      the teacher's own forward + ``log_softmax`` (reused buffer) on the very same windows and batches.
      ``--no-teacher`` swaps in a randomly initialised model of SmolLM2-135M's exact shape over the real
      tokenizer (same compute; use it only if the real teacher cannot load).

Each ratio is reported two ways: the median over repeats of the per-repeat ratio, and min/min (best time over
best time, the least noisy estimate on a shared machine). The conversion ratio is the worst over the vocabs.

Last line: ``RESULT convert_over_logsoftmax=<median> convert_over_logsoftmax_min=<min/min>
capture_over_forward=<median> capture_over_forward_min=<min/min>`` (one line).

Run: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/byte_conversion.py [--quick] [--no-teacher]
     [--positions 2048] [--repeats 5] [--naive-rows 6] [--texts 8] [--text-bytes 2000] [--vocabs smollm2,gemma3]

``benchmarks/gpu_smoke.py`` imports the helpers below to measure the same ratios on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mergekd.assets import load_tokenizer, read_body  # noqa: E402
from mergekd.bytes import (  # noqa: E402
    byte_logprobs_from_logits,
    byte_vocab_for,
    teacher_byte_logprobs_batch,
    trie_index_for,
)
from mergekd.data import chunk_text  # noqa: E402

# The conversion softmaxes at most this many logits at a time into a reused buffer; the floor does the same.
CHUNK_ELEMENTS = 1 << 23
# SmolLM2-135M's architecture (its GGUF's config), for --no-teacher: same compute, random weights.
SMOLLM2_135M_SHAPE = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, positions=8192, tie=True)


# ------------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------------


def sync(device) -> None:
    """Wait for queued GPU work, so a wall-clock time covers the kernels and not just their launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device="cpu") -> dict[str, list[float]]:
    """Seconds of each function per repeat, the functions taking turns inside every repeat.

    Why interleaved: on a shared machine load comes and goes; timing A five times and then B five times would
    put different load on each. One untimed warm-up call each first (caches, lazily built indexes, GPU kernels).
    """
    for fn in fns.values():
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def ratios(num: list[float], den: list[float]) -> tuple[float, float]:
    """(median of per-repeat ratios, min/min): the typical cost and the least noisy estimate of it."""
    return statistics.median(a / b for a, b in zip(num, den)), min(num) / min(den)


# ------------------------------------------------------------------------------------------------------------
# (1) Conversion vs log_softmax on the same logits
# ------------------------------------------------------------------------------------------------------------


def conversion_inputs(vocab, index, ids: list[int], device="cpu", seed: int = 0):
    """Random logits [T, V] and the byte rows (position, trie node, actual byte) of tokens ids[1:].

    Row j of the logits predicts token ids[j+1], as in a teacher's forward pass; every byte of every predicted
    token is one row, exactly the rows a capture converts. Logits are scaled ×3 so the distributions are
    peaked like a trained model's (a flat random softmax would flatter nothing, but would not look real).
    """
    lens = torch.tensor([len(vocab.token_bytes[i] or b"") for i in ids[1:]])
    tok = torch.tensor(ids[1:])
    owner = torch.repeat_interleave(torch.arange(len(lens)), lens)
    offset = torch.arange(owner.numel()) - (torch.cumsum(lens, 0) - lens)[owner]
    where = index.path_ptr.device  # the index may already live on the GPU (a capture moved it there)
    node = index.nodes_for(tok[owner].to(where), offset.to(where))
    data = vocab.decode_bytes(ids[1:])
    actual = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(ids) - 1, index.num_logits, generator=g) * 3.0
    return logits.to(device), owner.to(device), node.to(device), actual.to(device)


def log_softmax_reused(logits: torch.Tensor) -> Callable[[], None]:
    """log_softmax of ``logits`` into one reused buffer, chunked like the conversion: the fair floor.

    Why reused and chunked: a fresh [T, V] output costs page faults that have nothing to do with the maths, and
    the conversion itself softmaxes CHUNK_ELEMENTS logits at a time into a reused buffer.
    """
    rows, width = logits.shape
    chunk = max(1, CHUNK_ELEMENTS // width)
    buf = torch.empty(min(chunk, rows), width, dtype=logits.dtype, device=logits.device)

    def run() -> None:
        for p0 in range(0, rows, chunk):
            part = logits[p0:p0 + chunk]
            torch.log_softmax(part, -1, out=buf[: part.shape[0]])

    return run


def measure_conversion(name: str, text: str, positions: int, repeats: int, device="cpu") -> dict:
    """Time the conversion of every byte row of ``text`` (≤ ``positions`` teacher positions) against
    log_softmax (reused buffer and fresh output) on the same random logits, interleaved."""
    tok = load_tokenizer(name)
    vocab = byte_vocab_for(tok, name)
    t0 = time.perf_counter()
    index = trie_index_for(vocab, len(tok), device)
    build_s = time.perf_counter() - t0
    ids = tok(text[: positions * 8], split_special_tokens=True)["input_ids"][: positions + 1]
    logits, row_pos, row_node, row_byte = conversion_inputs(vocab, index, ids, device)
    times = interleaved({
        "log_softmax_reused": log_softmax_reused(logits),
        "log_softmax": lambda: torch.log_softmax(logits, -1),
        "conversion": lambda: byte_logprobs_from_logits(index, logits, row_pos, row_node, row_byte),
    }, repeats, device)
    med, best = ratios(times["conversion"], times["log_softmax_reused"])
    return {"name": name, "vocab": len(tok), "positions": logits.shape[0], "rows": int(row_pos.numel()),
            "build_s": build_s, "times": times, "ratio": med, "ratio_min": best,
            "ratio_fresh": ratios(times["conversion"], times["log_softmax"])[0],
            "tokenizer": tok, "vocab_obj": vocab, "ids": ids, "logits": logits, "row_pos": row_pos}


def print_conversion(r: dict) -> None:
    ms = {k: statistics.median(v) * 1e3 for k, v in r["times"].items()}
    print(f"{r['name']:8s} V={r['vocab']:7d} T={r['positions']} byte rows={r['rows']} index build "
          f"{r['build_s']:.2f}s | log_softmax reused {ms['log_softmax_reused']:8.1f} ms | fresh "
          f"{ms['log_softmax']:8.1f} ms | conversion {ms['conversion']:8.1f} ms | conversion/reused "
          f"{r['ratio']:.2f} (min/min {r['ratio_min']:.2f}) | conversion/fresh {r['ratio_fresh']:.2f}", flush=True)


# ------------------------------------------------------------------------------------------------------------
# Naive trie walk (the baseline the design replaces)
# ------------------------------------------------------------------------------------------------------------


class NaiveTrie:
    """Dict-of-dicts trie; a query sums each child's subtree by visiting every token under it."""

    def __init__(self, token_bytes):
        self.root: dict = {}
        for i, b in enumerate(token_bytes):
            if not b:
                continue
            node = self.root
            for c in b:
                node = node.setdefault(c, {})
            node.setdefault(None, []).append(i)

    def subtree_sum(self, node, probs) -> float:
        total = sum(probs[i] for i in node.get(None, []))
        for key, child in node.items():
            if key is not None:
                total += self.subtree_sum(child, probs)
        return total

    def row(self, probs, prefix: bytes) -> list[float]:
        node = self.root
        for c in prefix:
            node = node[c]
        masses = [0.0] * 257
        for c, child in node.items():
            if c is not None:
                masses[c] = self.subtree_sum(child, probs)
        total = sum(masses)
        return [m / total for m in masses]


def naive_seconds(r: dict, rows: int) -> float:
    """Seconds the naive walk would take for all of ``r``'s byte rows, extrapolated from ``rows`` of them."""
    vocab, ids, logits, row_pos = r["vocab_obj"], r["ids"], r["logits"].cpu(), r["row_pos"].cpu()
    trie = NaiveTrie(vocab.token_bytes)
    pick = torch.linspace(0, len(row_pos) - 1, rows).long()
    probs = torch.softmax(logits[row_pos[pick]].double(), -1).tolist()
    starts = [0]
    for i in ids[1:]:
        starts.append(starts[-1] + len(vocab.token_bytes[i]))
    t0 = time.perf_counter()
    for k, j in enumerate(pick.tolist()):
        t = int(row_pos[j])
        trie.row(probs[k], vocab.token_bytes[ids[1 + t]][: j - starts[t]])
    return (time.perf_counter() - t0) / len(pick) * len(row_pos)


# ------------------------------------------------------------------------------------------------------------
# (2) Capture vs the teacher's own forward + log_softmax on the same windows
# ------------------------------------------------------------------------------------------------------------


def random_llama(vocab_size: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 positions: int, tie: bool = False, seed: int = 0):
    """A randomly initialised Llama of the given shape (no download): timing does not depend on the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=positions, tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


def random_smollm2_teacher():
    """SmolLM2-135M's shape with random weights over the real SmolLM2 tokenizer, as a mergekd Teacher."""
    from mergekd.teachers import Teacher

    tok = load_tokenizer("smollm2")
    return Teacher("random-smollm2-135m", random_llama(len(tok), **SMOLLM2_135M_SHAPE), tok)


def capture_texts(nbytes: int, count: int, skip: int = 10) -> list[str]:
    """``count`` consecutive chunks of ≤ ``nbytes`` UTF-8 bytes of Botchan's body (past its first pages)."""
    chunks = chunk_text(read_body("botchan"), nbytes)[skip:skip + count]
    if len(chunks) < count:
        raise SystemExit(f"Botchan has only {len(chunks)} chunks of {nbytes} bytes past the first {skip}; "
                         "ask for fewer or shorter texts")
    return chunks


def teacher_batches(teacher, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) batches exactly as the capture builds them.

    Each text must fit one window (so capture and forward see the same windows, with no overlap re-reads):
    windows hold the text's canonical ids (BOS included), ``teacher.batch_size`` windows per batch, right-padded.
    """
    windows = [teacher.vocab.align(t).token_ids.tolist() for t in texts]
    longest = max(len(w) for w in windows)
    if longest > teacher.max_length:
        raise SystemExit(f"a text has {longest} tokens, more than one {teacher.max_length}-token window of "
                         f"{teacher.name}; use shorter texts (--text-bytes)")
    pad = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    batches = []
    for b0 in range(0, len(windows), teacher.batch_size):
        group = windows[b0:b0 + teacher.batch_size]
        ids = torch.full((len(group), max(len(w) for w in group)), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, w in enumerate(group):
            ids[r, : len(w)] = torch.tensor(w)
            attn[r, : len(w)] = 1
        batches.append((ids.to(teacher.device), attn.to(teacher.device)))
    return batches


def forward_log_softmax(teacher, batches) -> Callable[[], None]:
    """The teacher's forward + log_softmax into a reused buffer, over ``batches``: what any KD pipeline pays."""
    width = teacher.model.get_output_embeddings().weight.shape[0]
    biggest = max(ids.numel() for ids, _ in batches) * width
    buf = torch.empty(biggest, dtype=torch.float32, device=teacher.device)

    def run() -> None:
        with torch.no_grad():
            for ids, attn in batches:
                logits = teacher.model(input_ids=ids, attention_mask=attn).logits
                torch.log_softmax(logits, -1, out=buf[: logits.numel()].view(logits.shape))

    return run


def measure_capture(teacher, texts: list[str], repeats: int) -> dict:
    """Time mergekd's capture of ``texts`` against the teacher's forward + log_softmax on the same windows."""
    teacher.model.eval()
    batches = teacher_batches(teacher, texts)

    def capture() -> None:
        teacher_byte_logprobs_batch(teacher.model, teacher.tokenizer, texts, vocab=teacher.vocab,
                                    max_length=teacher.max_length, overlap=teacher.overlap,
                                    batch_size=teacher.batch_size)

    times = interleaved({"forward": forward_log_softmax(teacher, batches), "capture": capture}, repeats,
                        teacher.device)
    med, best = ratios(times["capture"], times["forward"])
    return {"times": times, "ratio": med, "ratio_min": best, "windows": len(texts), "batches": len(batches),
            "tokens": sum(int(a.sum()) for _, a in batches), "bytes": sum(len(t.encode("utf-8")) for t in texts)}


def print_capture(teacher, r: dict) -> None:
    ms = {k: statistics.median(v) * 1e3 for k, v in r["times"].items()}
    print(f"{teacher.name} on {teacher.device}: {r['windows']} windows ({r['tokens']} tokens, {r['bytes']} bytes) in "
          f"{r['batches']} batches of ≤{teacher.batch_size} | forward+log_softmax {ms['forward']:8.1f} ms | capture "
          f"{ms['capture']:8.1f} ms | capture/forward {r['ratio']:.2f} (min/min {r['ratio_min']:.2f})", flush=True)


def load_capture_teacher(no_teacher: bool):
    """The real SmolLM2-135M teacher (offline GGUF; ~30 s the first time), or its random-weight twin."""
    if no_teacher:
        print("--no-teacher: a random-weight model of SmolLM2-135M's shape over the real tokenizer", flush=True)
        return random_smollm2_teacher()
    from mergekd.teachers import load_teacher

    t0 = time.perf_counter()
    teacher = load_teacher("smollm2-135m")
    print(f"loaded the real teacher smollm2-135m in {time.perf_counter() - t0:.1f} s", flush=True)
    return teacher


# ------------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, fewer positions, shorter texts")
    ap.add_argument("--no-teacher", action="store_true",
                    help="capture with a random-weight model of SmolLM2-135M's shape (if the real one fails to load)")
    ap.add_argument("--positions", type=int, default=None, help="teacher positions of random logits (default 2048)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats of each side (default 5)")
    ap.add_argument("--naive-rows", type=int, default=None, help="byte rows of the naive walk (default 6)")
    ap.add_argument("--texts", type=int, default=None, help="capture windows, one text each (default 8)")
    ap.add_argument("--text-bytes", type=int, default=None, help="bytes per capture text (default 2000)")
    ap.add_argument("--vocabs", default="smollm2,gemma3", help="tokenizers of the conversion benchmark")
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = ap.parse_args()
    quick = {"positions": 256, "repeats": 2, "naive_rows": 2, "texts": 2, "text_bytes": 600}
    full = {"positions": 2048, "repeats": 5, "naive_rows": 6, "texts": 8, "text_bytes": 2000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} positions={args.positions} repeats={args.repeats} texts={args.texts}×"
          f"{args.text_bytes} B torch={torch.__version__}", flush=True)
    text = read_body("botchan")
    worst = None
    for name in [v.strip() for v in args.vocabs.split(",") if v.strip()]:
        r = measure_conversion(name, text, args.positions, args.repeats)
        print_conversion(r)
        if args.naive_rows > 0:
            naive = naive_seconds(r, args.naive_rows)
            print(f"{'':8s} naive trie walk (extrapolated from {args.naive_rows} rows) {naive:.1f} s = "
                  f"{naive / statistics.median(r['times']['conversion']):.0f}× the conversion", flush=True)
        for heavy in ("logits", "row_pos", "ids", "vocab_obj", "tokenizer"):  # free GBs before the next vocab
            del r[heavy]
        worst = r if worst is None or r["ratio"] > worst["ratio"] else worst
    teacher = load_capture_teacher(args.no_teacher)
    cap = measure_capture(teacher, capture_texts(args.text_bytes, args.texts), args.repeats)
    print_capture(teacher, cap)
    print(f"RESULT convert_over_logsoftmax={worst['ratio']:.2f} convert_over_logsoftmax_min={worst['ratio_min']:.2f} "
          f"capture_over_forward={cap['ratio']:.2f} capture_over_forward_min={cap['ratio_min']:.2f}")


if __name__ == "__main__":
    main()
