"""Benchmark: token → byte conversion vs. a log_softmax over the same logits vs. a naive trie walk.

For each real tokenizer (SmolLM2, V = 49,152; Gemma-3, V = 262,144) it takes the canonical tokenization of a
real text (botchan), random teacher logits for a few thousand positions, and times, in one run:

  (a) torch.log_softmax over the [T, V] logits — the floor any distillation pays anyway (also shown: the
      same op writing into a reused buffer, which avoids the page faults of a fresh multi-GB output);
  (b) mergekd's conversion of the same logits into next-byte log-probs for every byte of the text;
  (c) a naive per-position trie walk (Python dict trie, summing each child's subtree token by token) on a
      subsample of byte rows, extrapolated per row.

Last line: ``RESULT conversion/log_softmax=<x> naive/conversion=<y>`` (worst case over the vocab sizes).

Run: python benchmarks/byte_conversion.py [--positions 2048] [--repeats 3] [--naive-rows 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mergekd.assets import load_tokenizer, read_text  # noqa: E402
from mergekd.bytes import byte_logprobs_from_logits, byte_vocab_for, trie_index_for  # noqa: E402


def build_rows(vocab, index, ids):
    """(row_pos, row_node, row_byte) for every byte of tokens ids[1:], predicted by logits rows 0..T-1."""
    lens = torch.tensor([len(vocab.token_bytes[i] or b"") for i in ids[1:]])
    tok = torch.tensor(ids[1:])
    owner = torch.repeat_interleave(torch.arange(len(lens)), lens)
    offset = torch.arange(owner.numel()) - (torch.cumsum(lens, 0) - lens)[owner]
    node = index.nodes_for(tok[owner], offset)
    data = vocab.decode_bytes(ids[1:])
    return owner, node, torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


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


def timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-rows", type=int, default=6)
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = read_text("botchan")
    worst_conv, worst_naive = 0.0, float("inf")
    print(f"threads={args.threads} positions={args.positions} repeats={args.repeats}")
    for name in ["smollm2", "gemma3"]:
        tok = load_tokenizer(name)
        vocab = byte_vocab_for(tok, name)
        t0 = time.perf_counter()
        index = trie_index_for(vocab, len(tok))
        build_s = time.perf_counter() - t0
        ids = tok(text[: args.positions * 8], split_special_tokens=True)["input_ids"][: args.positions + 1]
        T = len(ids) - 1
        row_pos, row_node, row_byte = build_rows(vocab, index, ids)
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(T, len(tok), generator=g) * 3.0
        t_ls = timeit(lambda: torch.log_softmax(logits, -1), args.repeats)
        # the same op writing into a reused buffer (no page faults): the strictest floor we know of
        chunk = max(1, (1 << 23) // len(tok))
        buf = torch.empty(chunk, len(tok))

        def log_softmax_reused():
            for p0 in range(0, T, chunk):
                torch.ops.aten._log_softmax.out(logits[p0:p0 + chunk], -1, False, out=buf[: min(chunk, T - p0)])

        t_ls_buf = timeit(log_softmax_reused, args.repeats)
        t_conv = timeit(lambda: byte_logprobs_from_logits(index, logits, row_pos, row_node, row_byte), args.repeats)
        # naive walk on a subsample of rows, extrapolated per row
        trie = NaiveTrie(vocab.token_bytes)
        pick = torch.linspace(0, len(row_pos) - 1, args.naive_rows).long()
        probs = torch.softmax(logits[row_pos[pick]].double(), -1).tolist()
        lens = [len(vocab.token_bytes[i]) for i in ids[1:]]
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        t0 = time.perf_counter()
        for k, r in enumerate(pick.tolist()):
            t = int(row_pos[r])
            prefix = vocab.token_bytes[ids[1 + t]][: r - starts[t]]
            trie.row(probs[k], prefix)
        t_naive = (time.perf_counter() - t0) / len(pick) * len(row_pos)
        conv_ratio = t_conv / t_ls
        naive_ratio = t_naive / t_conv
        worst_conv, worst_naive = max(worst_conv, conv_ratio), min(worst_naive, naive_ratio)
        print(f"{name:8s} V={len(tok):7d} T={T} byte rows={len(row_pos)} index build {build_s:.2f}s | "
              f"log_softmax {t_ls * 1e3:8.1f} ms | conversion {t_conv * 1e3:8.1f} ms | "
              f"naive (extrapolated) {t_naive:8.1f} s | conversion/log_softmax {conv_ratio:.2f} "
              f"naive/conversion {naive_ratio:.0f} | log_softmax into a reused buffer {t_ls_buf * 1e3:.1f} ms, "
              f"conversion/that {t_conv / t_ls_buf:.2f}")
    print(f"RESULT conversion/log_softmax={worst_conv:.2f} naive/conversion={worst_naive:.0f}")


if __name__ == "__main__":
    main()
