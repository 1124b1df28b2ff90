"""Slow float64 brute-force reference of the canonical-path rule, written independently of mergekd.bytes.

It shares nothing with the fast code but the definition: token bytes (ByteVocab.token_bytes, the thing the rule
is stated over), the tokenizer's own tokenization and the model. Masses are found by testing every vocabulary
entry with ``bytes.startswith`` in Python, probabilities are float64 softmaxes of the model's logits, and the
window of every token is chosen by re-reading the documented windowing rule directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class BruteForce:
    def __init__(self, token_bytes):
        self.token_bytes = token_bytes
        self._members: dict[bytes, dict[int, np.ndarray]] = {}

    def members(self, prefix: bytes) -> dict[int, np.ndarray]:
        """next byte c → ids of non-special tokens that start with prefix·c."""
        if prefix not in self._members:
            groups: dict[int, list[int]] = {}
            for i, b in enumerate(self.token_bytes):
                if b and len(b) > len(prefix) and b.startswith(prefix):
                    groups.setdefault(b[len(prefix)], []).append(i)
            self._members[prefix] = {c: np.asarray(v) for c, v in groups.items()}
        return self._members[prefix]

    def row(self, probs64: np.ndarray, prefix: bytes) -> np.ndarray:
        """Next-byte distribution [257] after ``prefix`` inside a token, given next-token probs (float64)."""
        out = np.zeros(257)
        for c, ids in self.members(prefix).items():
            out[c] = probs64[ids].sum()
        return out / out.sum()


def reference_targets(model, tokenizer, token_bytes, text: str, max_length: int, overlap: int):
    """(probs [N,257] float64 with NaN rows where undefined, mask [N]) by brute force."""
    data = text.encode("utf-8")
    ids = tokenizer(text, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    spelled = b"".join(token_bytes[i] or b"" for i in ids)
    dummy = len(spelled) - len(data)
    assert dummy in (0, 1) and spelled[dummy:] == data
    lead = 0
    while lead < len(ids) and not token_bytes[ids[lead]]:
        lead += 1
    prefix_ids, body = ids[:lead], ids[lead:]
    room = max_length - lead
    stride = room - overlap
    logits_cache: dict[int, torch.Tensor] = {}

    def logits_for_window(start: int) -> torch.Tensor:
        if start not in logits_cache:
            inp = torch.tensor([prefix_ids + body[start:start + room]])
            with torch.no_grad():
                logits_cache[start] = model(input_ids=inp).logits[0].double()
        return logits_cache[start]

    brute = BruteForce(token_bytes)
    probs = np.full((len(data), 257), np.nan)
    mask = np.zeros(len(data), dtype=bool)
    offset = -dummy
    for j, tid in enumerate(body):
        b = token_bytes[tid] or b""
        # documented rule: first window (start = 0, stride, 2·stride, ...) containing token j in which it has
        # at least `overlap` tokens of left context, the first window supplying the first tokens
        start = 0
        while not (start <= j < start + room and (start == 0 or j - start >= overlap)):
            start += stride
        row_in_window = lead + (j - start) - 1
        for k in range(len(b)):
            pos = offset + k
            if pos < 0:
                continue
            if row_in_window >= 0:
                p64 = torch.softmax(logits_for_window(start)[row_in_window], -1).numpy()
                probs[pos] = brute.row(p64, b[:k])
                mask[pos] = True
        offset += len(b)
    return probs, mask


def bits_per_byte(probs: np.ndarray, mask: np.ndarray, data: bytes) -> float:
    actual = np.frombuffer(data, dtype=np.uint8)
    p = probs[np.arange(len(data)), actual][mask]
    return float(-np.log(p).sum() / p.size / math.log(2))
