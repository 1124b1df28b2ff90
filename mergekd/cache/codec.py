"""Sparse byte rows: dense next-byte log-probs [N, 257] ⇄ a few (byte, log-prob code) entries per row.

Why this encoding (measured on botchan with SmolLM2-135M and Gemma-3-270m, see docs/cache.md):
inside a teacher token a next-byte row is nearly deterministic (1-3 bytes carry all the mass), at a token
boundary it spreads over ~100 bytes. So each row keeps a *variable* number of entries: its most probable bytes,
until the kept mass reaches ``1 - tail`` or ``top_k`` entries are kept. The rest (the tail) is one number per
row; its *shape* comes from a small per-shard table: the shard's summed tail masses, one distribution per class
of the row's most probable byte (lowercase, uppercase, space, digit, line/tab, UTF-8 lead, UTF-8 continuation,
other). After a likely lowercase letter the tail is mostly other letters; after a likely space it is mostly
punctuation and newlines. At top-16 on SmolLM2 the mean KL is 0.026 nats/byte with a uniform tail, 0.0075 with
one shape per shard, 0.0066 with one per class (in-shard fit, 16 chunks of botchan).

Log-probs are stored as uint8 codes ``c`` meaning ``log p = -c / 16`` (codes 0..254; the tail code 255 means
"no tail mass"). Rounding moves a log-prob by at most 1/32 nat and the row's renormalisation by at most another
1/32, so a stored byte's reconstructed log-prob is within ``LOGPROB_BOUND = 1/16`` nat of the dense one (for
dense log-probs ≥ -15.875); measured, the codes add ~5e-5 nats/byte of KL, and cost 2 bytes per entry instead
of 3 with float16. A row costs 2 + 2·n bytes (count, tail code, n entries).

Reconstruction: stored bytes get ``exp(-c/16)``; the tail mass ``exp(-tail/16)`` is spread over the bytes not
stored in proportion to the shape of the row's class; the row is renormalised. Column 256 (end of text) is -inf, as
inside every text; undefined rows (count 0) are NaN, as in :class:`~mergekd.bytes.ByteTargets`.

Both directions are vectorised over rows (topk, cumsum, repeat_interleave, scatter); no Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bytes import NUM_OUTCOMES
from ..errors import ConfigError, MergekdError

CODE_SCALE = 16.0  # log p = -code / CODE_SCALE
MAX_CODE = 254  # codes 0..254 hold log-probs down to -254/16 = -15.875 nats
ZERO_CODE = 255  # tail code: the kept bytes hold all the mass
LOGPROB_BOUND = 1.0 / CODE_SCALE  # |reconstructed - dense| log-prob of a stored byte (see module docstring)
MAX_TOP_K = 255  # counts are uint8 and at least one byte must stay outside the kept set for the tail
# Every byte gets at least this share of a tail shape (relative), so a tail byte is never given probability 0.
BACKGROUND_FLOOR = 1e-6
# Tail mass (in rows' worth, i.e. probability units) of the shard-wide shape mixed into each class's shape, so a
# class seen in only a few rows of a shard falls back to the shard's overall tail shape.
BACKGROUND_PRIOR = 1.0
NUM_BYTES = 256


def _byte_classes() -> torch.Tensor:
    """Class of each byte value (see module docstring); the tail shape is chosen by the top byte's class."""
    c = torch.full((NUM_BYTES,), 7, dtype=torch.long)  # punctuation, controls, anything else
    c[ord("a"):ord("z") + 1] = 0
    c[ord("A"):ord("Z") + 1] = 1
    c[ord(" ")] = 2
    c[ord("0"):ord("9") + 1] = 3
    c[[ord("\n"), ord("\r"), ord("\t")]] = 4
    c[0xC0:] = 5  # UTF-8 lead bytes
    c[0x80:0xC0] = 6  # UTF-8 continuation bytes
    return c


BYTE_CLASS = _byte_classes()
NUM_CLASSES = 8


class CacheFormatError(MergekdError, ValueError):
    """Byte targets that the cache cannot represent (a defined row with end-of-text mass inside a text, NaN)."""


@dataclass
class EncodedRows:
    """Sparse rows of consecutive texts (see module docstring for the meaning of each tensor)."""

    count: torch.Tensor  # uint8 [R]: entries of each row; 0 ⇔ undefined row (mask False)
    tail: torch.Tensor  # uint8 [R]: code of the row's tail mass (ZERO_CODE: none; undefined rows: ZERO_CODE)
    entry_byte: torch.Tensor  # uint8 [E]: byte value of each entry, rows in order, most probable first
    entry_code: torch.Tensor  # uint8 [E]: log-prob code of each entry
    tail_mass: torch.Tensor  # float64 [NUM_CLASSES, 256]: summed tail probability per top-byte class and byte

    @property
    def num_rows(self) -> int:
        return int(self.count.numel())

    @property
    def num_entries(self) -> int:
        return int(self.entry_byte.numel())


def check_options(top_k: int, tail: float) -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise ConfigError(f"top_k={top_k} must be in 1..{MAX_TOP_K} (entries per byte row)")
    if not 0.0 <= tail < 1.0:
        raise ConfigError(f"tail={tail} must be in [0, 1): the probability mass a row may leave to the tail")


def _to_code(logp: torch.Tensor) -> torch.Tensor:
    """float log-probs (≤ 0) → uint8 codes 0..MAX_CODE (clamped; -inf → MAX_CODE)."""
    return torch.round(-logp * CODE_SCALE).clamp(0, MAX_CODE).to(torch.uint8)


def from_code(code: torch.Tensor) -> torch.Tensor:
    """uint8 codes → float32 log-probs (ZERO_CODE → -inf)."""
    lp = -code.to(torch.float32) / CODE_SCALE
    return torch.where(code == ZERO_CODE, float("-inf"), lp)


def encode_rows(logprobs: torch.Tensor, mask: torch.Tensor, top_k: int, tail: float) -> EncodedRows:
    """Dense rows [R, 257] (+ mask [R]) → :class:`EncodedRows`. Undefined rows may hold anything (NaN)."""
    check_options(top_k, tail)
    if logprobs.dim() != 2 or logprobs.shape[1] != NUM_OUTCOMES or mask.shape != logprobs.shape[:1]:
        raise CacheFormatError(f"expected logprobs [R, {NUM_OUTCOMES}] and mask [R], got "
                               f"{tuple(logprobs.shape)} and {tuple(mask.shape)}")
    mask = mask.bool()
    rows = logprobs[mask].to(torch.float64)
    if rows.numel() and bool(torch.isfinite(rows[:, NUM_BYTES]).any()):
        raise CacheFormatError("a defined byte row gives end-of-text a probability inside the text; the cache "
                               "stores 256 byte outcomes only (is this a new conversion rule?)")
    rows = rows[:, :NUM_BYTES]
    if bool(torch.isnan(rows).any()):
        raise CacheFormatError("a defined byte row holds NaN; the teacher's byte targets are corrupt")
    rows = rows - torch.logsumexp(rows, -1, keepdim=True)  # exact normalisation before measuring tails
    k = min(top_k, NUM_BYTES)
    vals, idx = torch.topk(rows, k, dim=-1, sorted=True)
    cum = torch.cumsum(vals.exp(), -1)
    # smallest n whose top-n mass reaches 1 - tail, at most k, never an impossible (-inf) byte
    n = 1 + (cum[:, :-1] < 1.0 - tail).sum(-1)
    n = torch.minimum(n, torch.isfinite(vals).sum(-1).clamp(min=1))
    keep = torch.arange(k) < n.unsqueeze(1)
    probs = rows.exp()
    rest = probs.scatter(1, idx, torch.where(keep, 0.0, vals.exp()))  # kept bytes zeroed: no cancellation
    tail_p = rest.sum(-1)
    tail_code = torch.where(tail_p > 0, _to_code(torch.log(tail_p)), torch.tensor(ZERO_CODE, dtype=torch.uint8))

    count = torch.zeros(mask.shape[0], dtype=torch.uint8)
    count[mask] = n.to(torch.uint8)
    tail_all = torch.full((mask.shape[0],), ZERO_CODE, dtype=torch.uint8)
    tail_all[mask] = tail_code
    by_class = torch.zeros(NUM_CLASSES, NUM_BYTES, dtype=torch.float64).index_add_(0, BYTE_CLASS[idx[:, 0]], rest)
    return EncodedRows(count=count, tail=tail_all, entry_byte=idx[keep].to(torch.uint8),
                       entry_code=_to_code(vals[keep]), tail_mass=by_class)


def background_from(tail_mass: torch.Tensor) -> torch.Tensor:
    """Summed tail masses [NUM_CLASSES, 256] → tail shapes (float32 [NUM_CLASSES, 256], rows sum to 1, every
    entry > 0): each class's own masses plus BACKGROUND_PRIOR of the shard-wide shape, plus a floor."""
    tail_mass = tail_mass.to(torch.float64)
    overall = tail_mass.sum(0)
    overall = (overall + BACKGROUND_FLOOR * float(overall.sum()) + 1e-30)
    overall = overall / overall.sum()
    smoothed = tail_mass + BACKGROUND_PRIOR * overall.unsqueeze(0)
    smoothed = smoothed + BACKGROUND_FLOOR * smoothed.sum(-1, keepdim=True)
    return (smoothed / smoothed.sum(-1, keepdim=True)).to(torch.float32)


def decode_rows(count: torch.Tensor, tail: torch.Tensor, entry_byte: torch.Tensor, entry_code: torch.Tensor,
                background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse rows → (logprobs float32 [R, 257], mask bool [R]); see the module docstring."""
    num_rows = count.shape[0]
    n = count.long()
    mask = n > 0
    row_of = torch.repeat_interleave(torch.arange(num_rows), n, output_size=int(entry_byte.numel()))
    col = entry_byte.long()
    kept = torch.zeros(num_rows, NUM_BYTES, dtype=torch.bool)
    kept[row_of, col] = True
    first = (torch.cumsum(n, 0) - n).clamp(max=max(0, int(entry_byte.numel()) - 1))  # entry 0 = the top byte
    top = entry_byte.long()[first] if entry_byte.numel() else torch.zeros(num_rows, dtype=torch.long)
    shape = torch.where(kept, 0.0, background.to(torch.float32)[BYTE_CLASS[top]])
    tail_p = from_code(tail).exp()
    probs = shape * (tail_p / shape.sum(-1).clamp(min=1e-30)).unsqueeze(1)
    probs[row_of, col] = from_code(entry_code).exp()
    logprobs = torch.full((num_rows, NUM_OUTCOMES), float("-inf"), dtype=torch.float32)
    logprobs[:, :NUM_BYTES] = torch.log(probs) - torch.log(probs.sum(-1, keepdim=True))
    logprobs[~mask] = float("nan")
    return logprobs, mask


def kl_per_row(dense: torch.Tensor, approx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(dense ‖ approx) in nats for each row where ``mask`` (float64 [M]); 0·log 0 counts as 0."""
    p_log = dense[mask].to(torch.float64)
    q_log = approx[mask].to(torch.float64)
    p_log = p_log - torch.logsumexp(p_log, -1, keepdim=True)
    p = p_log.exp()
    terms = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))
    return terms.sum(-1)


__all__ = ["BYTE_CLASS", "CODE_SCALE", "LOGPROB_BOUND", "MAX_TOP_K", "ZERO_CODE", "CacheFormatError", "EncodedRows",
           "background_from", "check_options", "decode_rows", "encode_rows", "from_code", "kl_per_row"]
