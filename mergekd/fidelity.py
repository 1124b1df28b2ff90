"""How far are the fast canonical-path byte targets from the exact ones? (issue 9)

Why. The fast rule (:mod:`mergekd.bytes.convert`) reads each byte's distribution off the teacher's canonical
tokenization; the exact byte LM (:mod:`mergekd.bytes.exact`) sums over every tokenization that covers the
prefix. Users distilling from a teacher should know how much the cheap targets differ from the truth, and
where. Both differences come from the fast rule knowing the canonical segmentation: at a token boundary it
knows the previous token stopped (the exact LM still weighs a longer token that goes on), inside a token it
knows the token goes on (probability 0 for every byte that would need a boundary there).

Reported per split ("boundary": the byte is the first byte of a canonical teacher token; "inside": any other
byte, including the first text byte after a SentencePiece dummy space) over sampled byte rows:

* ``jsd_*`` — Jensen-Shannon divergence between the two 257-way distributions, in bits (0…1);
* ``kl_mean_finite`` — KL(exact ‖ fast) in bits, averaged over the rows where it is finite;
  ``kl_infinite_fraction`` — rows where the fast rule gives 0 to a byte the exact LM deems possible (KL = ∞);
  ``exact_mass_outside_fast`` — mean exact probability on such bytes;
* ``bpb_fast`` / ``bpb_exact`` on the sampled rows; and at top level ``bpb`` over every row defined under both,
  with ``canonical_tokens``: −log2 P(canonical tokens) per byte, an upper bound of both rules' bits
  (of the exact rule's up to beam pruning).

All numbers are JSON-safe (no ∞/NaN: an empty split has ``n = 0`` and ``None`` values).
"""

from __future__ import annotations

import math
import random
import time

import torch

from .bytes import byte_vocab_for, teacher_byte_logprobs_batch
from .bytes.exact import exact_search
from .errors import EmptyTextError
from .text import head as text_head

LN2 = math.log(2.0)


def _row_divergences(exact_lp: torch.Tensor, fast_lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row JSD and KL(exact ‖ fast) in bits, plus the exact mass on bytes the fast rule rules out."""
    p, q = exact_lp.double().exp(), fast_lp.double().exp()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Σ a·log(a/b) with 0·log 0 = 0 and a > 0 = b → ∞ (kept: the caller counts them)."""
        terms = torch.where(a > 0, a * (torch.log(a) - torch.log(b)), torch.zeros_like(a))
        return terms.sum(1) / LN2

    return {
        "jsd": (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp(min=0.0),
        "kl": kl(p, q),
        "outside": torch.where(q > 0, torch.zeros_like(p), p).sum(1),
    }


def _summary(div: dict[str, torch.Tensor], lp_exact: torch.Tensor, lp_fast: torch.Tensor,
             select: torch.Tensor) -> dict:
    """Aggregate the rows in ``select`` (bool) into JSON-safe statistics."""
    n = int(select.sum())
    if n == 0:
        keys = ["jsd_mean", "jsd_median", "jsd_p90", "jsd_max", "kl_mean_finite", "kl_infinite_fraction",
                "exact_mass_outside_fast", "bpb_fast", "bpb_exact"]
        return {"n": 0, **{k: None for k in keys}}
    jsd, kl = div["jsd"][select], div["kl"][select]
    finite = torch.isfinite(kl)
    return {
        "n": n,
        "jsd_mean": float(jsd.mean()),
        "jsd_median": float(jsd.median()),
        "jsd_p90": float(torch.quantile(jsd, 0.9)),
        "jsd_max": float(jsd.max()),
        "kl_mean_finite": float(kl[finite].mean()) if finite.any() else None,
        "kl_infinite_fraction": float((~finite).double().mean()),
        "exact_mass_outside_fast": float(div["outside"][select].mean()),
        "bpb_fast": float(-lp_fast[select].double().mean() / LN2),
        "bpb_exact": float(-lp_exact[select].double().mean() / LN2),
    }


def _boundaries(vocab, text: str) -> torch.Tensor:
    """bool [N]: text bytes that are the first byte of a canonical (non-special) teacher token."""
    align = vocab.align(text)
    out = torch.zeros(align.num_bytes, dtype=torch.bool)
    starts = align.token_start[(align.token_len > 0) & (align.token_start >= 0)]
    out[starts] = True
    return out


def _canonical_token_bits(model, vocab, text: str) -> float | None:
    """−log2 P(canonical tokens) over the tokens that have a predicting position (the fast rule's rows).

    Why: it brackets both rules. The exact byte LM sums over tokenizations, so its bits are ≤ these; the fast
    rule conditions on where the canonical tokens end, so its bits are ≤ these too, and can fall below the
    exact ones: that gap is information about the segmentation, not about the text. None when the text does
    not fit the model's context in one pass.
    """
    ids = vocab.tokenize(text)
    if len(ids) > int(getattr(model.config, "max_position_embeddings", None) or len(ids)):
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].double()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:], device=device)[:, None])[:, 0]
    spells = torch.tensor([bool(vocab.token_bytes[i]) for i in ids[1:]], device=device)
    return float(-logp[spells].sum() / LN2)


def fidelity_report(model, tokenizer, text_or_texts: str | list[str], *, positions: int | None = 256,
                    beam: int | None = 8, seed: int = 0, prune: float = 0.0, max_bytes: int | None = None,
                    vocab=None) -> dict:
    """Fast vs exact next-byte distributions of one teacher on short texts (see the module docstring).

    Both rules run on every text (the exact one up to ``max_bytes`` bytes per text); ``positions`` rows are then
    drawn uniformly without replacement (``seed``) from the rows defined under both, or all rows when None or
    fewer exist. ``beam``/``prune`` are the exact search's (``beam=None`` is the exact sum: tiny texts only).
    """
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    if not texts:
        raise EmptyTextError("fidelity_report needs at least one text")
    vocab = vocab or byte_vocab_for(tokenizer)
    t0 = time.perf_counter()
    fast = teacher_byte_logprobs_batch(model, tokenizer, texts, vocab=vocab)
    fast_seconds = time.perf_counter() - t0
    exact_lp, fast_lp, real_exact, real_fast, boundary = [], [], [], [], []
    states = calls = 0
    canonical_bits: float | None = 0.0
    exact_seconds = 0.0
    used_cache = True
    for text, f in zip(texts, fast):
        res = exact_search(model, tokenizer, text, beam=beam, prune=prune, vocab=vocab, max_bytes=max_bytes)
        e = res.targets
        states, calls, exact_seconds = states + res.states, calls + res.model_calls, exact_seconds + res.seconds
        used_cache &= res.used_kv_cache
        both = e.mask & f.mask
        exact_lp.append(e.logprobs[both])
        fast_lp.append(f.logprobs[both])
        real_exact.append(e.realised_logprobs()[both])
        real_fast.append(f.realised_logprobs()[both])
        boundary.append(_boundaries(vocab, text)[both])
        whole = bool((e.mask == f.mask).all())  # not cut by max_bytes: the rows are the canonical tokens' bytes
        bits = _canonical_token_bits(model, vocab, text) if whole and canonical_bits is not None else None
        canonical_bits = None if bits is None else canonical_bits + bits
    exact_lp, fast_lp = torch.cat(exact_lp), torch.cat(fast_lp)
    real_exact, real_fast, boundary = torch.cat(real_exact), torch.cat(real_fast), torch.cat(boundary)
    total = exact_lp.shape[0]

    picked = torch.arange(total)
    if positions is not None and positions < total:
        picked = torch.sort(torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:positions]).values
    div = _row_divergences(exact_lp[picked], fast_lp[picked])
    re_, rf, bd = real_exact[picked], real_fast[picked], boundary[picked]
    everything = torch.ones_like(bd)
    return {
        "teacher": vocab.name,
        "beam": beam,
        "prune": prune,
        "seed": seed,
        "texts": len(texts),
        "bytes": total,
        "positions": int(picked.numel()),
        "all": _summary(div, re_, rf, everything),
        "boundary": _summary(div, re_, rf, bd),
        "inside": _summary(div, re_, rf, ~bd),
        "bpb": {
            "fast": float(-real_fast.double().mean() / LN2) if total else None,
            "exact": float(-real_exact.double().mean() / LN2) if total else None,
            "canonical_tokens": canonical_bits / total if total and canonical_bits is not None else None,
            "bytes": total,
        },
        "cost": {
            "fast_seconds": fast_seconds,
            "exact_seconds": exact_seconds,
            "exact_states": states,
            "exact_model_calls": calls,
            "kv_cache": used_cache,
        },
    }


# ------------------------------------------------------------------------------------------------------------


def sample_passages(text: str, positions: int, passage_bytes: int, seed: int) -> list[str]:
    """Random passages of ``text`` of ≤ ``passage_bytes`` UTF-8 bytes, until they hold ≥ ``positions`` bytes.

    Why passages: the exact search costs up to ``beam`` model steps per byte, so it runs on short pieces; each
    passage is scored as a fresh document (after the teacher's BOS). The file is cut into consecutive passages
    at line ends (a blank line always ends one; a line longer than ``passage_bytes`` is cut at a character
    boundary), and passages are drawn in a seeded random order.
    """
    passages: list[str] = []
    current = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            passages.append(current)
            current = ""
            continue
        while len(line.encode("utf-8")) > passage_bytes:
            head = text_head(line, passage_bytes)
            passages += [current, head]
            current, line = "", line[len(head):]
        joined = f"{current}\n{line}" if current else line
        if len(joined.encode("utf-8")) > passage_bytes:
            passages.append(current)
            joined = line
        current = joined
    passages = [p for p in passages + [current] if p.strip()]
    if not passages:
        raise EmptyTextError("the data file has no non-blank text")
    random.Random(seed).shuffle(passages)
    chosen, covered = [], 0
    for piece in passages:
        if covered >= positions:
            break
        chosen.append(piece)
        covered += len(piece.encode("utf-8"))
    return chosen


_ROWS = [  # (report key, label) of the printed table, one line per statistic
    ("n", "byte rows"),
    ("jsd_mean", "JSD mean (bits)"),
    ("jsd_median", "JSD median"),
    ("jsd_p90", "JSD p90"),
    ("jsd_max", "JSD max"),
    ("kl_mean_finite", "KL(exact‖fast) mean where finite"),
    ("kl_infinite_fraction", "rows with KL = ∞"),
    ("exact_mass_outside_fast", "exact mass on bytes fast excludes"),
    ("bpb_fast", "bits/byte, fast rule"),
    ("bpb_exact", "bits/byte, exact"),
]


def _print_report(report: dict) -> None:
    """Statistics as rows and splits as columns (fits 80 columns), then one line of totals and cost."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v, digits=4):
        return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    cost, bpb = report["cost"], report["bpb"]
    table = Table("", "all", "boundary", "inside",
                  title=f"{report['teacher']}: fast vs exact next-byte distributions (beam {report['beam']})")
    for key, label in _ROWS:
        table.add_row(label, *(fmt(report[split][key]) for split in ("all", "boundary", "inside")))
    console = Console()
    console.print(table)
    console.print(f"{report['positions']} sampled of {bpb['bytes']} bytes in {report['texts']} texts. Bits per byte "
                  f"over all: fast {fmt(bpb['fast'])}, exact {fmt(bpb['exact'])}, canonical tokens "
                  f"{fmt(bpb['canonical_tokens'])}. Exact search: {cost['exact_states']} states, "
                  f"{cost['exact_model_calls']} model calls, {cost['exact_seconds']:.1f} s "
                  f"(fast rule {cost['fast_seconds']:.2f} s).")
